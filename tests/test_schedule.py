"""``simulate`` prices the compiled schedule: the instruction stream the accelerator RTL executes."""

from __future__ import annotations

from ptq2rtl.simulate import simulate_report
from sim import isa
from sim.accel import load_accel
from sim.compile import compile_program
from sim.schedule import instr_actions, schedule_report
from tests.synthetic_programs import bert_program, vit_program

EDGE4 = load_accel("edge-int4")


def test_simulate_counts_the_compiled_instructions_cycle_for_cycle():
    p = vit_program()
    compiled = compile_program(p, EDGE4)
    rep = simulate_report(p, EDGE4)
    assert rep["basis"]["kind"] == "schedule"
    assert rep["cycles"] == compiled.cycles(EDGE4).total == sum(isa.instr_cycles(i, EDGE4) for i in compiled.instrs)
    per_op = compiled.cycles(EDGE4).per_op
    assert {o["name"]: o["cycles"] for o in rep["ops"]} == per_op


def test_samples_run_one_after_the_other():
    p = vit_program()
    one, three = (simulate_report(p, EDGE4, batch=b) for b in (1, 3))
    assert three["cycles"] == 3 * one["cycles"]
    assert three["dram_bytes"] == 3 * one["dram_bytes"]


def test_dram_bytes_are_the_beats_the_instructions_move():
    p = vit_program()
    compiled = compile_program(p, EDGE4)
    r = schedule_report(p, EDGE4, compiled.instrs)
    bb = int(EDGE4.dram_bytes_per_cycle)
    fetched = len(compiled.instrs) * isa.instr_beats(bb) * bb
    loaded = sum(i["count"] * isa.beats(isa.load_item_bits(i["target"], EDGE4), bb) * bb
                 for i in compiled.instrs if i.op == "load")
    stored = sum(i["count"] * isa.beats(32 * EDGE4.array.rows, bb) * bb for i in compiled.instrs if i.op == "store")
    assert r.dram_bytes == fetched + loaded + stored
    # every byte a program must move is among them
    assert r.dram_bytes >= r.compulsory_dram_bytes


def test_a_gemm_counts_every_pe_operation_of_its_folds():
    gemm = isa.Instr("gemm", {"mode": "linear", "m": 17, "kf": 6, "nf": 12, "digits": 1, "w_digits": 1},
                     frozenset({"requant"}))
    acts = instr_actions(gemm, EDGE4)
    assert acts["mac"] == 17 * 6 * 12 * 16 * 16
    assert acts["requant"] == 17 * 12 * 16


def test_a_program_the_compiler_does_not_take_is_estimated_and_says_why():
    rep = simulate_report(bert_program(), EDGE4, seq_len=32)
    assert rep["basis"]["kind"] == "estimate"
    assert "compiler does not take" in rep["basis"]["note"]
