"""The op registry: one definition per op kind, read by validation, the engine, the cost model and the traces."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sim import engine, intops
from sim.accel import load_accel
from sim.cycles import program_cycles
from sim.energy import program_energy
from sim.ops import OPS, OpKind, Value
from sim.program import IntegerProgram, Op, ProgramError, TensorSpec, validate
from tests.synthetic_programs import bert_program, vit_program

ROOT = Path(__file__).resolve().parents[1]


class Negate(OpKind):
    """A toy kind defined only here: saturating negation on the requantizer's lanes."""

    kind = "negate"
    attrs = ("out_bits",)
    unit = "requant"
    report_class = "residual"

    def check(self, c, ins):
        bits = c.attr("out_bits", 2, 32)
        return [Value("", ins[0].shape, *intops.int_range(bits))]

    def run(self, op, args, ctx):
        return [intops.saturate(-args[0], op.attrs["out_bits"])]

    def cost(self, m, c, i, op, fused):
        n = m.plan.numel(op.inputs[0])
        m.stream(c, i, op, m.a.requant, n, fused)
        c.count("add_const", n)


def _negate_program(out_bits: int = 8) -> IntegerProgram:
    x = TensorSpec("x", 8, True, (4, 16))
    y = TensorSpec("y", out_bits, True, (4, 16))
    return IntegerProgram("toy", [x], ["y"], {"x": x, "y": y}, [Op("negate", "neg", ["x"], ["y"], {"out_bits": out_bits})])


def test_a_new_op_kind_defined_in_one_place_validates_runs_and_is_priced(monkeypatch):
    monkeypatch.setitem(OPS, "negate", Negate())
    program = _negate_program()
    validate(program)
    x = np.full((2, 4, 16), -128, np.int64)
    x[1] = np.arange(64).reshape(4, 16)
    y = engine.run(program, {"x": x}).outputs["y"]
    assert y[0].max() == 127 and np.array_equal(y[1], -x[1])  # -(-128) saturates at int8
    accel = load_accel("edge-int4")
    cost = program_cycles(program, accel, batch=2)
    assert cost.ops[0].unit == "requant" and cost.ops[0].compute_cycles > 0
    assert program_energy(cost, accel).breakdown_j["requant"] > 0


def test_an_unregistered_kind_is_refused_by_name():
    with pytest.raises(ProgramError, match=r"op 'neg': unknown kind 'negate'"):
        validate(_negate_program())


def test_a_kind_whose_output_is_declared_too_narrow_is_refused(monkeypatch):
    monkeypatch.setitem(OPS, "negate", Negate())
    program = _negate_program(16)
    program.tensors["y"] = TensorSpec("y", 8, True, (4, 16))
    with pytest.raises(ProgramError, match=r"op 'neg' \(negate\): field 'outputs': tensor 'y' is declared int8"):
        validate(program)


ALLOWED = {("sim/program.py", "return [op for op in self.ops if op.kind == kind]"),  # ops_of: a filter, not dispatch
           # not op kinds: an accelerator bench case's group, a regression run's kind (bench or exported size)
           ("rtl_tests/bench_accelerator.py", "cases = [c for c in b.cases if kind is None or c.kind == kind]"),
           ("rtl_tests/regress.py", "label = f\"{'exported ' if kind == 'exported' else ''}{config}\"")}


def test_nothing_outside_the_registry_dispatches_on_an_op_kind():
    """`op.kind ==` and `kind in (...)` appear only in sim/ops.py (IntegerProgram.ops_of filters by kind)."""
    pattern = re.compile(r"""\bkind\s*(==|!=|in\s*\()|\.kind\s+in\s+\w""")
    offenders = []
    for folder in ("sim", "quant", "hw", "rtl_tests", "reports", "ptq2rtl", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "sim" / "ops.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                rel = str(path.relative_to(ROOT))
                if pattern.search(line) and (rel, line.strip()) not in ALLOWED:
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_registered_kind_declares_its_unit_and_report_class():
    units = {"array", "requant", "softmax", "gelu", "layernorm", "dram", "none"}
    for name, kind in OPS.items():
        assert kind.kind == name
        assert kind.unit in units, name
        assert kind.role in ("array", "view", "stream"), name
        assert kind.bench is None or kind.bench in ("requant", "gelu", "softmax", "layernorm", "mac_array"), name


# ---------------------------------------------------------------- widths between producers and consumers
def _first(program, kind):
    return program.ops_of(kind)[0]


def test_a_requant_writing_16_bits_into_an_8_bit_gelu_input_is_refused():
    program = vit_program(depth=1)
    gelu = _first(program, "gelu")
    producer = next(op for op in program.ops if gelu.inputs[0] in op.outputs)
    producer.attrs["out_bits"] = 16
    with pytest.raises(ProgramError, match=rf"op {producer.name!r} \(requant\): field 'outputs': .*declared int8"):
        validate(program)


def test_a_gelu_table_indexed_by_an_unsigned_tensor_is_refused():
    program = vit_program(depth=1)
    gelu = _first(program, "gelu")
    spec = program.tensors[gelu.inputs[0]]
    program.tensors[spec.name] = TensorSpec(spec.name, 8, False, spec.shape)
    with pytest.raises(ProgramError, match=r"\(requant\): field 'outputs'|\(gelu\): field 'in_bits'"):
        validate(program)


def test_softmax_input_wider_than_the_unit_is_refused():
    program = vit_program(depth=1)
    soft = _first(program, "softmax_log2")
    producer = next(op for op in program.ops if soft.inputs[0] in op.outputs)
    producer.attrs["out_bits"] = 20
    spec = program.tensors[soft.inputs[0]]
    program.tensors[spec.name] = TensorSpec(spec.name, 20, True, spec.shape)
    with pytest.raises(ProgramError, match=r"\(softmax_log2\): field 'inputs': .*accepts \[-32768, 32767\]"):
        validate(program)


def test_a_tensor_produced_twice_is_refused():
    program = vit_program(depth=1)
    ops = program.ops
    ops.insert(len(ops), Op(ops[-1].kind, "again", list(ops[-1].inputs), list(ops[-1].outputs), dict(ops[-1].attrs),
                            dict(ops[-1].params)))
    with pytest.raises(ProgramError, match=r"op 'again'.*already produced"):
        validate(program)


def test_an_unknown_attribute_is_refused_by_name():
    program = vit_program(depth=1)
    _first(program, "requant").attrs["zero_pint"] = 0
    with pytest.raises(ProgramError, match=r"field 'zero_pint': not an attribute of requant"):
        validate(program)


# ---------------------------------------------------------------- what the engine checks as it runs
def test_an_input_of_the_wrong_shape_is_a_program_error():
    program = vit_program(depth=1)
    spec = program.inputs[0]
    x = np.zeros((2,) + tuple(d + 1 for d in spec.shape), np.int64)
    with pytest.raises(ProgramError, match=rf"input {spec.name!r} must have shape \[batch, "):
        engine.run(program, {spec.name: x})


def test_token_ids_beyond_the_vocabulary_are_a_program_error():
    program = bert_program(depth=1, vocab=120)
    ids = np.full((1, 5), 120)
    with pytest.raises(ProgramError, match=r"op 'embed.word' \(embedding\): field 'inputs': id 120 outside the "
                                           r"table's rows \[0, 119\]"):
        engine.run(program, {"input_ids": ids, "attention_mask": np.ones((1, 5), np.int64)})


def test_inputs_that_disagree_on_the_token_count_are_a_program_error():
    program = bert_program(depth=1)
    with pytest.raises(ProgramError, match=r"'attention_mask' has 4 tokens, another input has 5"):
        engine.run(program, {"input_ids": np.ones((1, 5), np.int64), "attention_mask": np.ones((1, 4), np.int64)})


def test_more_positions_than_the_position_table_holds_is_a_program_error():
    program = bert_program(depth=1)  # 64 positions
    with pytest.raises(ProgramError, match=r"op 'embed.position' \(embedding\): field 'inputs': id 64"):
        engine.run(program, {"input_ids": np.ones((1, 65), np.int64), "attention_mask": np.ones((1, 65), np.int64)})
