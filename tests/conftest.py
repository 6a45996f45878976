"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_synthesis_tools(monkeypatch):
    """Fail the test if hw.synth runs a tool: asking yosys its version is all that may run."""
    from hw import synth

    run = synth.subprocess.run

    def only_versions(command, *args, **kwargs):
        assert command[1:] == ["-V"], f"a tool ran: {command}"
        return run(command, *args, **kwargs)

    monkeypatch.setattr(synth.subprocess, "run", only_versions)
