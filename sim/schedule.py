"""The cost of a compiled schedule: what ``simulate`` reports for a program the accelerator runs.

``sim.compile`` turns a program into the instruction stream that ``hw.accelerator`` executes; this
module prices that same stream. Each instruction's cycles are ``sim.isa.instr_cycles`` (the controller's
cycle contract, which the RTL meets exactly), and its energy actions are counted from its fields: the
DRAM beats it moves, the buffer words it reads and writes, the PE operations of its folds, the elements
through each vector unit. An op's cost is the sum over the instructions compiled from it
(``Instr.note``); instructions that belong to no op (program inputs loaded, outputs stored, ``end``) are
rows of their own.

Where this differs from the analytic model of ``sim.cycles`` (which stays as the estimate for programs
the compiler does not take yet), it is because the accelerator does something else: instructions run
one after the other (no DRAM transfer overlaps compute), activations sit in ABUF as 32-bit elements
(four bytes a value moved, whatever its width), and every fold pays its weight loads in full, padding
included.
"""

from __future__ import annotations

from sim import isa
from sim.accel import AccelConfig
from sim.cycles import CycleReport, OpCost, layer_of, program_cycles
from sim.ops import OPS
from sim.program import IntegerProgram

_UNIT = {"gemm": "array", "load": "dram", "store": "dram", "end": "none"}


def instr_actions(instr: isa.Instr, accel: AccelConfig) -> dict[str, int]:
    """Energy actions (``sim.energy.ACTIONS``) of one instruction, its fetch included."""
    v = accel.array.rows
    bb = int(accel.dram_bytes_per_cycle)
    word_bits = isa.load_item_bits("abuf", accel)  # an ABUF word, what a store moves per item
    word = word_bits // 8
    acts: dict[str, int] = {"dram": isa.instr_beats(bb) * bb}

    def count(action: str, n: int) -> None:
        if n:
            acts[action] = acts.get(action, 0) + n

    op = instr.op
    if op == "load":
        bits = isa.load_item_bits(instr["target"], accel)
        count("dram", instr["count"] * isa.beats(bits, bb) * bb)
        if instr["target"] in ("abuf", "wbuf"):
            buffer = "activation" if instr["target"] == "abuf" else "weight"
            count(f"sram_{buffer}_write", instr["count"] * bits // 8)
    elif op == "store":
        count("dram", instr["count"] * isa.beats(word_bits, bb) * bb)
        count("sram_activation_read", instr["count"] * word)
    elif op == "gemm":
        m, nf = instr["m"], instr["nf"]
        folds = isa.gemm_folds(instr)
        mode = instr["mode"]
        count({"linear": "mac", "matmul": "mac", "matmul_kn": "mac"}.get(mode, "shift_mac_sqrt2" if instr.flag("sqrt2") else "shift_mac"),
              folds * m * v * v)
        if mode == "linear":
            count("sram_weight_read", folds * v * v * accel.array.weight_bits // 8)
        else:
            count("sram_activation_read", folds * v * word)
        count("sram_activation_read", folds * m * word + (nf * word if instr.flag("bias") else 0))
        acc = m * v * 4
        count("sram_accumulator_write", folds * acc)
        # every fold but a column's first adds to what is there, and the last drains it
        count("sram_accumulator_read", folds * acc)
        if instr.flag("requant"):
            count("requant", nf * m * v)
        if instr.flag("gelu"):
            count("gelu", nf * m * v)
        count("sram_activation_write", nf * m * word)
    elif op == "vector":
        unit, rows, words = instr["unit"], instr["rows"], instr["words"]
        n = rows * words
        reads = 2 if unit in ("add", "add_const") or (unit == "softmax" and instr.flag("mask")) else 1
        count("sram_activation_read", reads * n * word)
        count("sram_activation_write", n * word)
        # each vector unit's name is its energy action (sim.energy.ACTIONS), counted per element
        count(unit, rows * instr["n_valid"] if unit in ("layernorm", "softmax") else n * v)
        if unit in ("layernorm", "softmax"):
            count(f"{unit}_row", rows)
        if unit == "requant" and instr.flag("gelu"):
            count("gelu", n * v)
    return acts


def schedule_report(program: IntegerProgram, accel: AccelConfig, instrs: list[isa.Instr], *, batch: int = 1,
                    seq_len: int | None = None) -> CycleReport:
    """A :class:`sim.cycles.CycleReport` of ``instrs`` (compiled from ``program`` for one sample) run for
    ``batch`` samples one after the other: per op the cycles and actions of its instructions; MACs are the
    op's useful ones (padding excluded)."""
    estimate = program_cycles(program, accel, batch=batch, seq_len=seq_len or 128)
    macs = {o.name: o.macs for o in estimate.ops}
    rows: dict[str, OpCost] = {}
    for op in program.ops:
        rows[op.name] = OpCost(op.name, op.kind, layer_of(op.name), OPS[op.kind].unit, macs=macs.get(op.name, 0))
    for instr in instrs:
        name = instr.note or instr.op
        c = rows.get(name)
        if c is None:
            c = rows[name] = OpCost(name, instr.op, name, _UNIT.get(instr.op, "none"))
        cycles = batch * isa.instr_cycles(instr, accel)
        c.cycles += cycles
        if instr.op in ("load", "store"):  # the array waits: no transfer overlaps compute
            c.stall_cycles += cycles
        else:
            c.compute_cycles += cycles
        for action, n in instr_actions(instr, accel).items():
            c.count(action, batch * n)
        if instr.op == "gemm":
            c.array_macs += batch * isa.gemm_folds(instr) * instr["m"] * accel.pes
    for c in rows.values():
        c.dram_bytes = c.actions.get("dram", 0)
    return CycleReport(program.model, accel.name, batch, estimate.seq_len, accel.pes, accel.clock_mhz,
                       list(rows.values()), estimate.compulsory_dram_bytes)
