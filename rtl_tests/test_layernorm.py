"""LayerNorm RTL vs sim.intops.layernorm, on Icarus and on Verilator: random and corner vectors, then program traces."""

from __future__ import annotations

import pytest

from rtl_tests import harness, traces, units
from rtl_tests.conftest import SIMS


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(units.CONFIGS["layernorm"]))
def test_layernorm_matches_intops_and_row_cycles(config, sim):
    s = units.run_config("layernorm", config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("config", units.exported_cases("layernorm"))
def test_layernorm_at_exported_sizes_matches_intops_and_row_cycles_on_verilator(config):
    s = units.run_config("layernorm", config, "verilator")
    assert s["vectors"] >= 10_000 and s["cycles"]
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("path", traces.files("layernorm"), ids=lambda p: p.parent.name)
def test_layernorm_replays_program_traces_and_row_cycles(path, sim):
    s = units.run_trace("layernorm", path, sim)
    assert s["vectors"] > 0
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
