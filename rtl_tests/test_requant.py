"""Requantizer RTL vs sim.intops.requantize, on Icarus and on Verilator: random and corner vectors, then program traces."""

from __future__ import annotations

import pytest

from rtl_tests import harness, traces, units
from rtl_tests.conftest import SIMS


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(units.CONFIGS["requant"]))
def test_requant_matches_intops_and_stream_cycles(config, sim):
    s = units.run_config("requant", config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("config", units.exported_cases("requant"))
def test_requant_at_exported_sizes_matches_intops_and_stream_cycles_on_verilator(config):
    s = units.run_config("requant", config, "verilator")
    assert s["vectors"] >= 10_000 and s["cycles"]
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("path", traces.files("requant"), ids=lambda p: p.parent.name)
def test_requant_replays_program_traces_and_stream_cycles(path, sim):
    s = units.run_trace("requant", path, sim)
    assert s["vectors"] > 0
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
