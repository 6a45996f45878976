"""GELU ROM RTL vs sim.intops.gelu, on Icarus and on Verilator."""

from __future__ import annotations

import pytest

from hw.gelu import Gelu
from rtl_tests import harness, vectors
from rtl_tests.conftest import SIMS

CONFIGS = {"int8-x4": dict(in_bits=8, out_bits=8, lanes=4, latency=2)}


def run(config: str, sim: str) -> dict:
    dut = Gelu(**CONFIGS[config])
    p = dut.params
    return harness.run_bench("gelu", dut, p, vectors.gelu_vectors(p), sim, tag=config)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_gelu_matches_intops_and_timing(config, sim):
    s = run(config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
