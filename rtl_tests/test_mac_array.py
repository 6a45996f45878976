"""MAC array RTL vs sim.intops.linear / matmul_log2, on Icarus and on Verilator: random and corner vectors, then program traces."""

from __future__ import annotations

import numpy as np
import pytest

from hw.common import ParameterError
from hw.mac_array import LOG2_WINDOW, MacArray, log2_plan
from rtl_tests import harness, traces, units, vectors
from rtl_tests.conftest import SIMS
from sim import intops

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
