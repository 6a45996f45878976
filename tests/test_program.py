"""IntegerProgram files: round trip, atomic writes, and clear errors for every kind of bad file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from quant.lower import lower
from quant.methods import get_method
from sim.program import IntegerProgram, ProgramError, validate
from tests.tiny_models import image_batch, tiny_vit


@pytest.fixture(scope="module")
def program() -> IntegerProgram:
    _, spec = tiny_vit()
    plan = get_method("baseline")(spec, [(image_batch(), None)], 4, 4, progress=False)
    return lower(plan)


def _rewrite_graph(path, edit) -> None:
    """Change the JSON graph of a saved program in place (keeps the tensors)."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    arrays = load_file(str(path))
    graph = json.loads(meta["ptq2rtl.program"])
    edit(graph, arrays)
    save_file(arrays, str(path), metadata={"ptq2rtl.program": json.dumps(graph)})


def test_round_trip_keeps_every_op_and_param(program, tmp_path):
    path = tmp_path / "p.safetensors"
    program.save(path)
    loaded = IntegerProgram.load(path)
    assert [op.name for op in loaded.ops] == [op.name for op in program.ops]
    for a, b in zip(loaded.ops, program.ops):
        assert a.attrs == b.attrs
        for k in a.params:
            assert np.array_equal(a.params[k], b.params[k])


def test_truncated_file_is_a_clear_error(program, tmp_path):
    path = tmp_path / "p.safetensors"
    program.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProgramError, match="truncated or corrupt"):
        IntegerProgram.load(path)


def test_garbage_header_is_a_clear_error(tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"not json at all")
    with pytest.raises(ProgramError, match="p.safetensors"):
        IntegerProgram.load(path)


def test_unknown_schema_version_is_refused(program, tmp_path):
    path = tmp_path / "p.safetensors"
    program.save(path)
    _rewrite_graph(path, lambda g, a: g.update(schema_version=99))
    with pytest.raises(ProgramError, match="unknown schema version 99"):
        IntegerProgram.load(path)


def test_int4_weight_outside_range_names_op_and_field(program, tmp_path):
    path = tmp_path / "p.safetensors"
    program.save(path)

    def poke(graph, arrays):
        arrays["blocks.0.q.weight"][0, 0] = 9

    _rewrite_graph(path, poke)
    with pytest.raises(ProgramError, match=r"op 'blocks.0.q' \(linear\): field 'weight': values outside int4 range \[-8, 7\] \(found 9\)"):
        IntegerProgram.load(path)


def test_shape_mismatch_between_ops_names_the_op(program, tmp_path):
    path = tmp_path / "p.safetensors"
    program.save(path)

    def shrink(graph, arrays):
        arrays["blocks.0.fc2.weight"] = arrays["blocks.0.fc2.weight"][:, :-1].copy()

    _rewrite_graph(path, shrink)
    with pytest.raises(ProgramError, match=r"op 'blocks.0.fc2' \(linear\): field 'weight': expects 95 input features"):
        IntegerProgram.load(path)


def test_bit_width_out_of_range_names_the_field(program):
    op = program.ops_of("linear")[0]
    saved = op.attrs["wbits"]
    op.attrs["wbits"] = 12
    try:
        with pytest.raises(ProgramError, match=r"field 'wbits': 12 outside the accepted range \[2, 8\]"):
            validate(program)
    finally:
        op.attrs["wbits"] = saved


def test_missing_tensor_and_unknown_op_kind(program, tmp_path):
    path = tmp_path / "p.safetensors"
    program.save(path)
    _rewrite_graph(path, lambda g, a: a.pop("head.bias"))
    with pytest.raises(ProgramError, match="tensor 'head.bias' missing"):
        IntegerProgram.load(path)
    program.save(path)
    _rewrite_graph(path, lambda g, a: g["ops"][0].update(kind="conv3d"))
    with pytest.raises(ProgramError, match="unknown kind 'conv3d'"):
        IntegerProgram.load(path)


def test_failed_save_leaves_no_file(program, tmp_path, monkeypatch):
    import safetensors.numpy

    def explode(*args, **kwargs):
        with open(args[1], "wb") as fh:
            fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", explode)
    with pytest.raises(KeyboardInterrupt):
        program.save(tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_an_invalid_program_before_writing(program, tmp_path):
    op = program.ops_of("requant")[0]
    saved = op.params["shift"]
    op.params["shift"] = saved + 100
    try:
        with pytest.raises(ProgramError, match="shift"):
            program.save(tmp_path / "p.safetensors")
    finally:
        op.params["shift"] = saved
    assert list(tmp_path.iterdir()) == []
