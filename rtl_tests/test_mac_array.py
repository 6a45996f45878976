"""MAC array RTL vs sim.intops.linear / matmul_log2, on Icarus and on Verilator: random and corner vectors, then program traces."""

from __future__ import annotations

import pytest

from rtl_tests import harness, traces, units
from rtl_tests.conftest import SIMS


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(units.CONFIGS["mac_array"]))
def test_mac_array_matches_intops_and_gemm_cycles(config, sim):
    s = units.run_config("mac_array", config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("path", traces.files("mac_array"), ids=lambda p: p.parent.name)
def test_mac_array_replays_program_traces_and_gemm_cycles(path, sim):
    s = units.run_trace("mac_array", path, sim)
    assert s["vectors"] > 0
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
