"""BiBERT's binarized encoder: its integer program against its float forward, and its training's determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from quant.methods import get_method, method_names
from quant.methods.bibert import BinaryForward, calibrate, load_tensors, spec_tensors
from quant.quantizers import QuantError
from sim import engine
from tests.tiny_models import text_batch, tiny_bert


def _integer_and_float(spec, batch):
    plan = calibrate(spec, [(batch, None)], "sign", progress=False)
    program = plan.lower()
    out = engine.run(program, {k: batch[k].numpy() for k in ("input_ids", "token_type_ids", "attention_mask")})
    s_pool = program.tensors["pool"].scale
    with torch.no_grad():
        ref = BinaryForward(spec)(batch).double().numpy()
    return out.outputs["pool"] * s_pool, ref, program


def test_the_binary_program_computes_the_binarized_float_forward():
    _, spec = tiny_bert()
    batch = text_batch()
    got, ref, program = _integer_and_float(spec, batch)
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    # only LayerNorm's and the residual grid's rounding differ, but a sign near zero that flips moves every later
    # layer: most sentences agree to 0.99, a flipped one still to 0.95 (a wrong lowering lands near 0)
    assert cos.mean() > 0.97 and cos.min() > 0.95, cos
    kinds = {op.kind for op in program.ops}
    assert {"binary_linear", "binary_matmul", "bi_attention", "binarize", "binary_embedding"} <= kinds
    assert not kinds & {"linear", "matmul", "softmax_log2", "gelu"}  # every product binary, no softmax, no GELU


def test_a_binary_linear_holds_one_bit_a_weight_and_its_sign_threshold_is_exact():
    _, spec = tiny_bert()
    program = calibrate(spec, [(text_batch(), None)], "sign", progress=False).lower()
    q = next(op for op in program.ops if op.name == "blocks.0.q")
    w = spec.blocks[0].q.w
    assert np.array_equal(q.params["weight"], (w >= 0).numpy().astype(np.uint8))
    alpha = w.double().abs().mean(-1).numpy()
    b = spec.blocks[0].q.b.double().numpy()
    t = next(op for op in program.ops if op.name == "blocks.0.q.sign").params["threshold"]
    acc = np.arange(-40, 41)
    assert np.array_equal(acc[:, None] >= t[None, :], alpha[None, :] * acc[:, None] + b[None, :] >= 0)


def test_binary_methods_are_left_out_of_the_method_list_but_found_by_name():
    assert "bibert" not in method_names() and "sign" not in method_names()
    _, spec = tiny_bert()
    with pytest.raises(QuantError, match="trained binary student"):
        get_method("bibert")(spec, [], 4, 4, progress=False)


def test_a_checkpoint_missing_a_tensor_is_refused_naming_it():
    _, spec = tiny_bert()
    tensors = dict(spec_tensors(spec))
    tensors.pop("blocks.1.fc2.w")
    with pytest.raises(QuantError, match="'blocks.1.fc2.w' missing"):
        load_tensors(spec, tensors)


def test_bibert_training_is_deterministic_under_its_seed(tmp_path):
    from ptq2rtl import bibert, flows

    cfg = dataclasses.replace(bibert.TRAIN_CONFIG, steps=2, batch_size=4, max_tokens=16)
    for i in range(2):
        bibert.train_bibert(tmp_path / f"{i}.safetensors", progress=False, cfg=cfg)
    runs = [load_file(str(tmp_path / f"{i}.safetensors")) for i in range(2)]
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    teacher = spec_tensors(flows.load_spec("minilm"))
    assert torch.equal(runs[0]["word"], teacher["word"])  # the word table keeps its FP32 latent values
    assert not torch.equal(runs[0]["blocks.0.q.w"], teacher["blocks.0.q.w"])  # the rest is trained
