"""Requantizer RTL vs sim.intops.requantize, on Icarus and on Verilator."""

from __future__ import annotations

import pytest

from hw.requant import Requantizer
from rtl_tests import harness, vectors
from rtl_tests.conftest import SIMS

CONFIGS = {
    "dyadic-16b": dict(in_bits=32, out_bits=16, mult_bits=16, lanes=4, channels=16),
    "pow2-8b": dict(in_bits=32, out_bits=8, lanes=2, channels=16, pow2=True, latency=4),
}


def run(config: str, sim: str) -> dict:
    dut = Requantizer(**CONFIGS[config])
    p = dut.params
    return harness.run_bench("requant", dut, p, vectors.requant_vectors(p), sim, tag=config)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_requant_matches_intops_and_timing(config, sim):
    s = run(config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
