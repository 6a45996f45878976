"""The cycle model's invariants: MAC counts, the array's fold formula, scaling, DRAM traffic, overlap, reports."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest

from ptq2rtl.simulate import format_table, simulate_report
from sim import timing
from sim.accel import load_accel
from sim.cycles import layer_of, program_cycles
from sim.program import IntegerProgram, Op, TensorSpec, validate
from tests.synthetic_programs import bert_program, deit_small, vit_program

EDGE4 = load_accel("edge-int4")
EDGE8 = load_accel("edge-int8")


def _with(accel, **changes):
    """``accel`` with fields of its sub-configs replaced, e.g. ``array={"cols": 32}``."""
    return dataclasses.replace(accel, **{k: dataclasses.replace(getattr(accel, k), **v) if isinstance(v, dict) else v
                                         for k, v in changes.items()})


def _one_linear(m: int, k: int, n: int, xbits: int = 4, wbits: int = 4) -> IntegerProgram:
    x = TensorSpec("x", xbits, True, (m, k))
    y = TensorSpec("y", 32, True, (m, n))
    op = Op("linear", "fc", ["x"], ["y"], {"wbits": wbits, "abits": xbits},
            {"weight": np.zeros((n, k), np.int8), "bias": np.zeros(n, np.int32)})
    p = IntegerProgram("one-linear", [x], ["y"], {"x": x, "y": y}, [op])
    validate(p)
    return p


def _analytic_macs(program: IntegerProgram, batch: int = 1, seq_len: int = 128) -> int:
    """Multiply-accumulates of the program's arithmetic, from its shapes alone."""
    def dims(name):
        return [seq_len if d is None else d for d in program.tensors[name].shape]

    total = sum(math.prod(dims(op.inputs[0])) * op.params["weight"].shape[0] for op in program.ops_of("linear"))
    for op in program.ops_of("matmul"):
        b = dims(op.inputs[1])
        total += math.prod(dims(op.inputs[0])) * (b[-2] if op.attrs["transpose_b"] else b[-1])
    for op in program.ops_of("matmul_log2"):
        total += math.prod(dims(op.inputs[0])) * dims(op.inputs[1])[-1]
    return batch * total


def _weight_bytes(program: IntegerProgram) -> int:
    return sum(math.ceil(op.params["weight"].size * op.attrs["wbits"] / 8) for op in program.ops_of("linear"))


def _io_bytes(program: IntegerProgram, batch: int = 1, seq_len: int = 128) -> int:
    def nbytes(spec):
        return math.ceil(batch * math.prod(seq_len if d is None else d for d in spec.shape) * spec.bits / 8)
    return sum(nbytes(t) for t in program.inputs) + sum(nbytes(program.tensors[n]) for n in program.outputs)


PROGRAMS = {
    "vit": lambda: vit_program(),
    "bert": lambda: bert_program(),
    "vit-w4a8": lambda: vit_program(abits=8),
}


@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.parametrize("batch", [1, 3])
def test_mac_count_equals_the_analytic_mac_count(name, batch):
    p = PROGRAMS[name]()
    r = program_cycles(p, EDGE4, batch=batch, seq_len=40)
    assert r.macs == _analytic_macs(p, batch, seq_len=40)


@pytest.mark.parametrize("name", PROGRAMS)
def test_compute_cycles_are_never_below_macs_over_pes(name):
    r = program_cycles(PROGRAMS[name](), EDGE4)
    for o in r.ops:
        if o.macs:
            assert o.compute_cycles * EDGE4.pes >= o.array_macs >= o.macs, o.name
    assert r.cycles * EDGE4.pes >= r.macs
    assert 0 < r.utilization <= 1


def test_a_linear_takes_exactly_the_fold_formula_of_sim_timing():
    r = program_cycles(_one_linear(100, 200, 300), EDGE4)
    (fc,) = r.ops
    assert fc.compute_cycles == timing.gemm_cycles(100, 200, 300, 16, 16)
    stages = timing.MAC_IN_STAGES + timing.MAC_PRODUCT_STAGES + timing.MAC_BOTTOM_STAGES + timing.MAC_ACC_STAGES
    fold = 16 + 100 + 16 + 16 - 1 + stages
    assert fc.compute_cycles == math.ceil(200 / 16) * math.ceil(300 / 16) * fold


def test_doubling_the_columns_nearly_halves_a_large_gemm():
    p = _one_linear(480, 1024, 1024)
    wide = _with(EDGE4, array={"cols": 32}, buffers={"accumulator_kib": 128})
    narrow_cycles = program_cycles(p, EDGE4).ops[0].compute_cycles
    wide_cycles = program_cycles(p, wide).ops[0].compute_cycles
    assert 0.5 <= wide_cycles / narrow_cycles <= 0.53  # the fill of a fold grows by the 16 extra columns


def test_an_8_bit_image_takes_two_passes_on_the_int4_array():
    p = vit_program()
    embed4 = next(o for o in program_cycles(p, EDGE4).ops if o.name == "patch_embed")
    embed8 = next(o for o in program_cycles(p, EDGE8).ops if o.name == "patch_embed")
    assert embed4.array_macs == 2 * embed4.macs
    assert embed8.array_macs == embed8.macs


@pytest.mark.parametrize("accel", [EDGE4, _with(EDGE4, buffers={"activation_kib": 16, "weight_kib": 4}),
                                   _with(EDGE4, buffers={"activation_kib": 4096, "weight_kib": 4096})])
@pytest.mark.parametrize("name", PROGRAMS)
def test_dram_bytes_are_at_least_the_compulsory_traffic(accel, name):
    p = PROGRAMS[name]()
    r = program_cycles(p, accel, batch=2)
    assert r.dram_bytes >= r.compulsory_dram_bytes >= _weight_bytes(p) + _io_bytes(p, batch=2)


def test_with_room_for_everything_dram_traffic_is_exactly_compulsory():
    roomy = _with(EDGE4, buffers={"activation_kib": 4096, "weight_kib": 4096})
    r = program_cycles(deit_small(), roomy)
    assert r.dram_bytes == r.compulsory_dram_bytes


def test_a_small_activation_buffer_spills_to_dram():
    p = deit_small()
    big = program_cycles(p, _with(EDGE4, buffers={"activation_kib": 4096}))
    small = program_cycles(p, _with(EDGE4, buffers={"activation_kib": 64}))
    assert small.dram_bytes > big.dram_bytes
    assert small.cycles >= big.cycles


def test_weights_that_do_not_fit_are_reloaded_per_row_tile():
    p = _one_linear(2000, 512, 512)  # 2000 rows: 4 tiles of <= 512 accumulator rows
    w = 512 * 512 // 2 + 512 * 4  # int4 weights and int32 bias
    fits = program_cycles(p, _with(EDGE4, buffers={"weight_kib": 256})).ops[0]
    spills = program_cycles(p, _with(EDGE4, buffers={"weight_kib": 64})).ops[0]
    assert spills.dram_bytes - fits.dram_bytes == 3 * w


def test_weights_are_loaded_once_for_the_whole_batch():
    p = vit_program()
    one, four = (program_cycles(p, EDGE4, batch=b) for b in (1, 4))
    assert four.macs == 4 * one.macs
    assert four.dram_bytes - four.compulsory_dram_bytes >= 0
    assert four.compulsory_dram_bytes < 4 * one.compulsory_dram_bytes


def test_fused_requant_hides_behind_the_array():
    r = program_cycles(vit_program(), EDGE4)
    fused = [o for o in r.ops if o.fused_into]
    assert {o.kind for o in fused} == {"requant", "gelu"}
    for o in fused:
        assert o.cycles < o.compute_cycles, o.name
    standalone = next(o for o in r.ops if o.unit == "layernorm")
    assert standalone.cycles == standalone.compute_cycles


def test_low_bandwidth_stalls_without_changing_compute():
    p = vit_program()
    fast = program_cycles(p, EDGE4)
    slow = program_cycles(p, _with(EDGE4, dram_bytes_per_cycle=0.25))
    assert [o.compute_cycles for o in fast.ops] == [o.compute_cycles for o in slow.ops]
    assert slow.stall_cycles > fast.stall_cycles
    assert slow.cycles - slow.stall_cycles == fast.cycles - fast.stall_cycles


def test_latency_is_cycles_at_the_clock():
    r = program_cycles(vit_program(), EDGE4)
    assert r.latency_s == pytest.approx(r.cycles / 200e6)


def test_text_programs_take_their_token_count_from_seq_len():
    p = bert_program()
    short, long = (program_cycles(p, EDGE4, seq_len=t) for t in (64, 128))
    assert (short.seq_len, long.seq_len) == (64, 128)
    assert long.cycles > short.cycles and long.macs > short.macs
    assert program_cycles(vit_program(), EDGE4).seq_len is None


def test_layers_group_ops_by_block_prefix():
    assert layer_of("blocks.3.fc1.requant") == "blocks.3"
    assert layer_of("encoder.layer.11.attention.q") == "encoder.layer.11"
    assert layer_of("patch_embed.requant") == "patch_embed"
    r = program_cycles(vit_program(depth=2), EDGE4)
    names = [l.name for l in r.layers()]
    assert names.count("blocks.0") == 1 and "blocks.1" in names and "head" in names
    assert sum(l.cycles for l in r.layers()) == r.cycles


def test_a_program_lowered_by_quant_runs():
    torch = pytest.importorskip("torch")
    from quant.lower import lower
    from quant.methods import get_method
    from tests.tiny_models import image_batch, tiny_vit

    _, spec = tiny_vit()
    plan = get_method("baseline")(spec, [(image_batch(8), torch.zeros(8))], 4, 4, progress=False)
    p = lower(plan)
    r = program_cycles(p, EDGE4)
    assert r.macs == _analytic_macs(p)
    assert r.dram_bytes >= r.compulsory_dram_bytes > _weight_bytes(p)


def test_simulate_report_is_json_with_a_readable_table():
    rep = simulate_report(vit_program(), "edge-int4")
    json.dumps(rep)
    for key in ("cycles", "latency_s", "energy_j", "utilization", "energy_breakdown_j", "layers", "ops"):
        assert key in rep
    names = [o["name"] for o in rep["ops"]]
    assert names[:len(vit_program().ops)] == [op.name for op in vit_program().ops]
    # the instructions of no op: program inputs loaded, outputs stored, end
    assert {o["kind"] for o in rep["ops"][len(vit_program().ops):]} <= {"load", "store", "end"}
    assert rep["basis"]["kind"] == "schedule"
    table = format_table(rep)
    assert "edge-int4" in table and "blocks.1" in table and "sram_accumulator_read" in table
    # throughput: two operations a MAC, over the latency (GOPS) and over the modelled energy (GOPS/W)
    assert rep["gops"] == pytest.approx(2 * rep["macs"] / rep["latency_s"] / 1e9)
    assert rep["gops_per_w"] == pytest.approx(2 * rep["macs"] / rep["energy_j"] / 1e9)
    assert rep["peak_gops"] == pytest.approx(2 * 16 * 16 * 200e6 / 1e9) and rep["gops"] < rep["peak_gops"]
    assert "GOPS/W (horowitz45 energy model)" in table


def test_deit_small_simulates_well_under_two_seconds():
    p = deit_small()
    start = time.perf_counter()
    rep = simulate_report(p, "edge-int4")
    elapsed = time.perf_counter() - start
    assert rep["macs"] == _analytic_macs(p)
    assert elapsed < 0.5, f"deit_small took {elapsed:.2f} s"
