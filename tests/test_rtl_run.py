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


def test_a_convolution_and_a_depthwise_one_run_on_the_rtl_bit_and_cycle_exact():
    """A stride-2 3x3 convolution of an int8 image padded with its zero point (-3), 'SAME' style (the odd
    pixel at the end), then a 3x3 depthwise convolution of its ABUF-resident output, stored to DRAM."""
    import numpy as np

    from rtl_tests.accelerator import run_images
    from sim import engine, intops
    from sim.compile import compile_program
    from tests.synthetic_programs import conv_program

    program = conv_program(size=(10, 9), stride=2, padding=(0, 1, 0, 1), bits=8, signed=True, pad_value=-3,
                           then_depthwise=True)
    accel = load_accel("edge-int4")
    lo, hi = intops.int_range(8, True)
    x = np.random.default_rng(3).integers(lo, hi + 1, size=(2, 10, 9, 20))
    compiled = compile_program(program, accel)
    want = engine.run(program, {"x": x}).outputs
    results, _ = run_images(accel, [compiled.image({"x": x[s]}) for s in range(2)])
    schedule = compiled.cycles(accel)
    for s, r in enumerate(results):
        assert np.array_equal(compiled.outputs(r.image)["dw"], want["dw"][s])
        assert r.cycles == schedule.total
        assert [c for _, c in r.retires] == np.cumsum(schedule.per_instr).tolist()  # every instruction's cycles


def test_a_cnn_digits_residual_block_runs_on_the_rtl_bit_and_cycle_exact():
    program, _ = flows.quantize("cnn-digits", "baseline", 4, 4, progress=False)
    r = rtl_run(program, load_accel("edge-int4"), samples=1, layer="layer2")
    print("\n" + format_summary(r))
    assert r["ok"] and r["bit_exact_samples"] == 1 and r["rtl_cycles"] == [r["simulate_cycles"]]
