"""Whole programs on the accelerator RTL (``ptq2rtl rtl-run``): vit-digits compiled by sim.compile, run on
the Verilator build of hw.accelerator at the edge configs' size, outputs bit-identical to sim.engine and
every instruction's cycles as sim.isa.instr_cycles, their sum what ``simulate`` prints. The full set (every
method, 16 samples) is ``benchmarks/bench_rtl_run.py``; this is its slice for CI."""

from __future__ import annotations

import pytest

from ptq2rtl import flows
from ptq2rtl.rtl_run import format_summary, rtl_run
from sim.accel import load_accel


@pytest.fixture(scope="module")
def spec():
    return flows.load_spec("vit-digits")


@pytest.mark.parametrize("accel, bits, samples", [("edge-int4", 4, 2), ("edge-int8", 8, 1),
                                                       ("ecp5-85f", 4, 1)])
def test_vit_digits_runs_on_the_rtl_bit_and_cycle_exact(spec, accel, bits, samples):
    program, _ = flows.quantize("vit-digits", "baseline", bits, bits, progress=False, spec=spec)
    r = rtl_run(program, load_accel(accel), samples=samples)
    print("\n" + format_summary(r))
    assert r["bit_exact_samples"] == samples, format_summary(r)
    assert r["rtl_cycles"] == [r["schedule_cycles"]] * samples, format_summary(r)
    assert r["simulate_cycles"] == r["schedule_cycles"]
    assert r["ok"]
