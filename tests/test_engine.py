"""The golden engine: deterministic, batch-independent, traceable, integer end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant.quantizers import program_inputs
from quant.lower import lower
from quant.methods import get_method
from sim import engine, intops
from sim.program import ProgramError
from tests.tiny_models import image_batch, text_batch, tiny_bert, tiny_vit


@pytest.fixture(scope="module", params=[(8, 8), (4, 4)], ids=["W8A8", "W4A4"])
def vit_program(request):
    _, spec = tiny_vit()
    wbits, abits = request.param
    return lower(get_method("baseline")(spec, [(image_batch(), None)], wbits, abits, progress=False))


@pytest.fixture(scope="module")
def bert_program():
    _, spec = tiny_bert()
    return lower(get_method("baseline")(spec, [(text_batch(), None)], 4, 4, progress=False))


def test_same_program_and_input_give_identical_bits(vit_program):
    x = program_inputs(vit_program, image_batch(8, seed=5))
    a = engine.run(vit_program, x).outputs["head.acc"]
    b = engine.run(vit_program, x).outputs["head.acc"]
    assert a.dtype == np.int64 and np.array_equal(a, b)


def test_sample_output_does_not_depend_on_the_batch(vit_program):
    x = program_inputs(vit_program, image_batch(8, seed=5))["input"]
    whole = engine.run(vit_program, {"input": x}).outputs["head.acc"]
    for i in range(8):
        alone = engine.run(vit_program, {"input": x[i:i + 1]}).outputs["head.acc"]
        assert np.array_equal(alone[0], whole[i])
    shuffled = engine.run(vit_program, {"input": x[::-1]}).outputs["head.acc"]
    assert np.array_equal(shuffled[::-1], whole)


def test_text_output_does_not_depend_on_padding_or_batch(bert_program):
    batch = text_batch()
    ints = program_inputs(bert_program, batch)
    whole = engine.run(bert_program, ints).outputs["pool"]
    for i in range(len(whole)):
        n = int(ints["attention_mask"][i].sum())
        alone = engine.run(bert_program, {k: v[i:i + 1, :n] for k, v in ints.items()}).outputs["pool"]
        assert np.array_equal(alone[0], whole[i]), f"sample {i} changed when run alone"


def test_trace_records_integer_inputs_and_outputs_of_every_op(vit_program):
    x = program_inputs(vit_program, image_batch(4, seed=2))
    res = engine.run(vit_program, x, trace_samples=[1, 3])
    assert set(res.trace) == {op.name for op in vit_program.ops}
    soft = vit_program.ops_of("softmax_log2")[0]
    codes = res.trace[soft.name]["outputs"][0]
    assert codes.shape[0] == 2 and codes.min() >= 0 and codes.max() <= 15
    for rec in res.trace.values():
        for arr in rec["inputs"] + rec["outputs"]:
            assert np.issubdtype(arr.dtype, np.integer)
    assert np.array_equal(res.trace["head"]["outputs"][0], res.outputs["head.acc"][[1, 3]])


def test_int4_program_weights_lie_in_int4(vit_program):
    for op in vit_program.ops_of("linear"):
        if op.attrs["wbits"] == 4:
            assert op.params["weight"].min() >= -8 and op.params["weight"].max() <= 7


def test_engine_refuses_inputs_outside_their_width(vit_program):
    x = program_inputs(vit_program, image_batch(2))["input"]
    with pytest.raises(ProgramError, match="outside its int8 range"):
        engine.run(vit_program, {"input": x * 1000})
    with pytest.raises(ProgramError, match="must be integers"):
        engine.run(vit_program, {"input": x.astype(np.float32)})
    with pytest.raises(ProgramError, match="missing"):
        engine.run(vit_program, {})


def test_every_tensor_the_engine_computes_is_an_integer_array_inside_its_declared_range(vit_program):
    """Validation's invariant, checked as the engine runs: each tensor holds integers its declaration allows."""
    names = [n for op in vit_program.ops for n in op.outputs]
    result = engine.run(vit_program, program_inputs(vit_program, image_batch(2)), keep=names)
    for name in names:
        y, spec = result.outputs[name], vit_program.tensors[name]
        assert np.issubdtype(y.dtype, np.integer), f"{name} is {y.dtype}"
        lo, hi = intops.int_range(spec.bits, spec.signed)
        assert lo <= y.min() and y.max() <= hi, f"{name}: [{y.min()}, {y.max()}] outside int{spec.bits}"


def test_float_blas_products_give_the_int64_products_bit_for_bit(vit_program, monkeypatch):
    """The engine's products through float BLAS (exact under the bound in ``exact_matmul``) change no bit."""
    x = program_inputs(vit_program, image_batch(4, seed=3))
    fast = engine.run(vit_program, x).outputs["head.acc"]
    monkeypatch.setattr(intops, "exact_matmul", lambda a, b: np.matmul(np.asarray(a, np.int64), np.asarray(b, np.int64)))
    assert np.array_equal(engine.run(vit_program, x).outputs["head.acc"], fast)


def test_integer_program_tracks_fp32_on_a_tiny_vit():
    model, spec = tiny_vit(depth=2)
    x = image_batch(32, seed=7)
    prog = lower(get_method("baseline")(spec, [(x, None)], 8, 8, progress=False))
    out = engine.run(prog, program_inputs(prog, x)).outputs["head.acc"].astype(np.float64)
    with torch.no_grad():
        ref = model(x).double().numpy()
    corr = np.corrcoef(out.ravel(), ref.ravel())[0, 1]
    assert corr > 0.95, corr
