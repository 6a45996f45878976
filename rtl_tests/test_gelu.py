"""GELU ROM RTL vs sim.intops.gelu, on Icarus and on Verilator: random and corner vectors, then program traces."""

from __future__ import annotations

import pytest

from rtl_tests import harness, traces, units
from rtl_tests.conftest import SIMS


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(units.CONFIGS["gelu"]))
def test_gelu_matches_intops_and_stream_cycles(config, sim):
    s = units.run_config("gelu", config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("config", units.exported_cases("gelu"))
def test_gelu_at_exported_sizes_matches_intops_and_stream_cycles_on_verilator(config):
    s = units.run_config("gelu", config, "verilator")
    assert s["vectors"] >= 10_000 and s["cycles"]
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("path", traces.files("gelu"), ids=lambda p: p.parent.name)
def test_gelu_replays_program_traces_and_stream_cycles(path, sim):
    s = units.run_trace("gelu", path, sim)
    assert s["vectors"] > 0
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
