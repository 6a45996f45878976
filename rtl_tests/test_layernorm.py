"""LayerNorm RTL vs sim.intops.layernorm, on Icarus and on Verilator."""

from __future__ import annotations

import pytest

from hw.layernorm import LayerNorm
from rtl_tests import harness, vectors
from rtl_tests.conftest import SIMS

CONFIGS = {
    "x4-n64-k2-lat64": dict(in_bits=16, out_bits=8, max_n=64, lanes=4, steps_per_cycle=2, latency=64),
    "x1-n32-k1": dict(in_bits=16, out_bits=16, max_n=32, lanes=1),
}


def run(config: str, sim: str) -> dict:
    dut = LayerNorm(**CONFIGS[config])
    p = dut.params
    return harness.run_bench("layernorm", dut, p, vectors.layernorm_vectors(p), sim, tag=config)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_layernorm_matches_intops_and_timing(config, sim):
    s = run(config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
