"""MAC array RTL vs sim.intops.linear / matmul_log2 / xnor_popcount / and_popcount, on Icarus and on Verilator:
random and corner vectors, then program traces."""

from __future__ import annotations

import numpy as np
import pytest

from hw.common import ParameterError
from hw.mac_array import LOG2_WINDOW, MacArray, log2_plan
from rtl_tests import harness, traces, units, vectors
from rtl_tests.conftest import SIMS
from sim import intops, timing
from sim.ops import BINARY_BENCH_MODE

#: build modes the regression configurations (log2 on, default products) leave out
MODES = {
    "int4-4x4-plain": dict(rows=4, cols=4, act_bits=4, weight_bits=4, max_m=32, log2=False),
    "int4-5x3-log2-dsp": dict(rows=5, cols=3, act_bits=4, weight_bits=4, max_m=32, products="dsp"),
    "int8-4x4-log2-code5": dict(rows=4, cols=4, act_bits=8, weight_bits=8, max_m=64, code_bits=5),
}


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(units.CONFIGS["mac_array"]))
def test_mac_array_matches_intops_and_gemm_cycles(config, sim):
    s = units.run_config("mac_array", config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(MODES))
def test_mac_array_build_modes_match_intops_and_gemm_cycles(config, sim):
    dut = MacArray(**MODES[config])
    p = dut.params
    s = harness.run_bench("mac_array", dut, p, vectors.mac_array_vectors(p), sim, tag=config)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("config", units.exported_cases("mac_array"))
def test_mac_array_at_exported_sizes_matches_intops_and_gemm_cycles_on_verilator(config):
    s = units.run_config("mac_array", config, "verilator")
    assert s["vectors"] >= 10_000 and s["cycles"]
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


#: builds the binary modes are benched on: binary_pack 4 (int4), 8 (int8), 2 (2-bit weights), the exported size
BINARY_BUILDS = {
    "int4-4x4": dict(rows=4, cols=4, act_bits=4, weight_bits=4, max_m=32),
    "int8-3x5-dsp": dict(rows=3, cols=5, act_bits=8, weight_bits=8, max_m=32, products="dsp", log2=False),
    "a4w2-5x3": dict(rows=5, cols=3, act_bits=4, weight_bits=2, max_m=16, log2=False),
}


def binary_vectors(p: dict, n_outputs: int = 6_000, seed: int = vectors.SEED) -> dict[str, np.ndarray]:
    """Random xnor and and GEMMs on bits (reductions off the fold's ``rows * pack`` multiples, so the bench pads),
    then corners: every product +1 and every product -1 in both modes, an all-zero and-operand, and the longest
    reduction the accumulators add exactly from both bias rails (whole folds: no padding to take off a rail)."""
    rng = np.random.default_rng(seed)
    rows, cols, max_m = p["rows"], p["cols"], p["max_m"]
    fold = rows * timing.binary_pack(p["act_bits"], p["weight_bits"])
    blo, bhi = intops.int_range(p["acc_bits"])
    cases, total = [], 0
    while total < n_outputs:
        mode = ("xnor", "and")[len(cases) % 2]
        m, k, n = int(rng.integers(1, max_m + 1)), int(rng.integers(1, 3 * fold + 1)), int(rng.integers(1, 3 * cols + 1))
        cases.append(vectors.gemm_case(rng.integers(0, 2, (m, k)), rng.integers(0, 2, (n, k)),
                                       rng.integers(-1000, 1000, n), f"{mode}_random{len(cases)}", "random",
                                       BINARY_BENCH_MODE[mode]))
        total += m * n
    k = 2 * fold + 1
    for mode in ("xnor", "and"):
        ones = np.ones((3, k), np.int64)
        for wbit, name in ((1, "all_plus"), (0, "all_minus")):
            cases.append(vectors.gemm_case(ones, np.full((cols + 1, k), wbit), np.zeros(cols + 1),
                                           f"{mode}_{name}", "corner", BINARY_BENCH_MODE[mode]))
        cases.append(vectors.gemm_case(np.zeros((2, k)), rng.integers(0, 2, (cols, k)), np.zeros(cols),
                                       f"{mode}_zero_operand", "corner", BINARY_BENCH_MODE[mode]))
        long_k = min(p["max_k"], vectors.LONG_K_FOLDS * rows) * fold // rows
        x = np.ones((2, long_k), np.int64)
        cases.append(vectors.gemm_case(x, np.ones((cols, long_k)), np.full(cols, bhi), f"{mode}_longest_k_high",
                                       "corner", BINARY_BENCH_MODE[mode]))
        cases.append(vectors.gemm_case(x, np.zeros((cols, long_k)), np.full(cols, blo), f"{mode}_longest_k_low",
                                       "corner", BINARY_BENCH_MODE[mode]))
    return vectors.merge(*cases)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(BINARY_BUILDS))
def test_mac_array_binary_modes_match_popcount_intops_and_binary_gemm_cycles(config, sim):
    dut = MacArray(**BINARY_BUILDS[config])
    p = dut.params
    s = harness.run_bench("mac_array", dut, p, binary_vectors(p), sim, tag=f"binary-{config}")
    assert s["vectors"] >= 6_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("path", traces.files("mac_array"), ids=lambda p: p.parent.name)
def test_mac_array_replays_program_traces_and_gemm_cycles(path, sim):
    s = units.run_trace("mac_array", path, sim)
    assert s["vectors"] > 0
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("code_bits", [2, 3, 4, 5])
@pytest.mark.parametrize("radix", [1, 3, 7, 8])
def test_log2_plan_reproduces_log2_weights_exactly(code_bits, radix):
    """A code's chain factor times 2**(radix * a + b), the PE's power of two, is the code's weight."""
    plan, factors = log2_plan(code_bits, radix)
    for sqrt2 in (False, True):
        want = intops.log2_weights(np.arange(1 << code_bits), code_bits, sqrt2)
        for code in range(1 << code_bits):
            entry = plan[sqrt2, code]
            if entry is None:
                assert want[code] == 0
                continue
            chain, a, b = entry
            assert b < radix and radix * a + b < LOG2_WINDOW
            got = factors[sqrt2][chain] << (radix * a + b)
            assert got == want[code], (sqrt2, code)
    assert factors[False][0] == 1  # the plain products' chain


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_products_other_than_lut_or_dsp_are_refused_naming_the_parameter():
    with pytest.raises(ParameterError, match="'products'"):
        MacArray(products="mult18")
