"""Log2 softmax RTL vs sim.intops.softmax_log2, on Icarus and on Verilator."""

from __future__ import annotations

import pytest

from hw.softmax import SoftmaxLog2
from rtl_tests import harness, vectors
from rtl_tests.conftest import SIMS

CONFIGS = {
    "x2-len64": dict(in_bits=16, max_len=64, lanes=2),
    "x1-len32-lat6": dict(in_bits=16, max_len=32, lanes=1, latency=6),
}


def run(config: str, sim: str) -> dict:
    dut = SoftmaxLog2(**CONFIGS[config])
    p = dut.params
    return harness.run_bench("softmax", dut, p, vectors.softmax_vectors(p), sim, tag=config)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_softmax_matches_intops_and_timing(config, sim):
    s = run(config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
