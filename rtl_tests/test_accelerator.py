"""The whole accelerator RTL (hw.accelerator) on Verilator at the bundled configs' real sizes (the edge configs'
16x16 array and 16 lanes, the FPGA config's 8x8 and 8 lanes): hand-built instruction streams, every result
element against sim.intops, every instruction's clock edges against sim.isa.instr_cycles. One Verilator build
and one simulation per config."""

from __future__ import annotations

import dataclasses

import pytest

from hw import toolchain
from hw.accelerator import Accelerator, field_views
from hw.common import ParameterError
from rtl_tests import bench_accelerator
from rtl_tests.accelerator import run_images
from sim import isa
from sim.accel import load_accel

CONFIGS = ("edge-int4", "edge-int8", "ecp5-85f")
needs_verilator = pytest.mark.skipif(not toolchain.available("verilator"), reason="Verilator is not installed")


@pytest.fixture(scope="module", params=CONFIGS)
def run(request):
    accel = load_accel(request.param)
    b = bench_accelerator.build_cases(accel)
    results, info = run_images(accel, [b.img.image()], sim="verilator")
    print(f"\n{accel.name}: {len(b.img.instrs)} instructions, {info['cycles']} cycles, Verilator build "
          f"{info['build_s']} s, run {info['run_s']} s")
    return b, results[0]


@needs_verilator
@pytest.mark.parametrize("kind", sorted(bench_accelerator.CASES))
def test_instruction_matches_intops_and_instr_cycles(run, kind):
    b, result = run
    problems = bench_accelerator.check(b, result.image, result.retires, kind)
    assert not problems, "\n".join(problems)


@needs_verilator
def test_every_instruction_takes_instr_cycles(run):
    b, result = run
    problems = bench_accelerator.check(b, result.image, result.retires)
    assert not problems, "\n".join(problems)
    assert result.cycles == sum(isa.instr_cycles(i, b.accel) for i in b.img.instrs)


def test_accelerator_refuses_unequal_lanes():
    accel = load_accel("edge-int4")
    bad = dataclasses.replace(accel, gelu=dataclasses.replace(accel.gelu, lanes=8))
    with pytest.raises(ParameterError, match="gelu.lanes = 8 must equal array.rows = 16"):
        Accelerator.from_accel(bad)


def test_field_slices_follow_the_isa_slots():
    """The controller's field slices read back what sim.isa.encode wrote."""
    instr = isa.Instr("vector", {name: 1000 + k for k, name in enumerate(isa.FORMATS["vector"]) if name != "unit"}
                      | {"unit": "softmax"}, frozenset({"mask"}))
    word = isa.encode(instr)

    class Ir:
        def __getitem__(self, s):
            return (word >> s.start) & ((1 << (s.stop - s.start)) - 1)

    fields = field_views(Ir())["vector"]
    assert {name: fields[name] for name in fields} == {**instr.fields, "unit": isa.VECTOR_UNITS.index("softmax")}
