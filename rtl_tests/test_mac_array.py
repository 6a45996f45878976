"""MAC array RTL vs sim.intops.linear, on Icarus and on Verilator."""

from __future__ import annotations

import pytest

from hw.mac_array import MacArray
from rtl_tests import harness, vectors
from rtl_tests.conftest import SIMS

CONFIGS = {
    "int4-4x4": dict(rows=4, cols=4, act_bits=4, weight_bits=4, max_m=32),
    "int8-8x4": dict(rows=8, cols=4, act_bits=8, weight_bits=8, max_m=32),
}


def run(config: str, sim: str) -> dict:
    dut = MacArray(**CONFIGS[config])
    p = dut.params
    return harness.run_bench("mac_array", dut, p, vectors.mac_array_vectors(p), sim, tag=config)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_mac_array_matches_intops_and_timing(config, sim):
    s = run(config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
