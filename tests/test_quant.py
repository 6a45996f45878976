"""Quantization: adapters reproduce the source models, quantizers keep their contracts, lowering is valid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant.lower import gelu_table, lower
from quant.methods import get_method, method_names
from quant.model import Forward
from quant.quantizers import QParams, QuantError, check_bits, dyadic, pow2_shift, quantize_weight, weight_scales
from sim.program import validate
from tests.tiny_models import image_batch, text_batch, tiny_bert, tiny_vit


def test_vit_adapter_forward_equals_timm():
    model, spec = tiny_vit()
    x = image_batch()
    with torch.no_grad():
        assert torch.allclose(Forward(spec)(x), model(x), atol=1e-5)


def test_bert_adapter_forward_equals_transformers_mean_pool():
    model, spec = tiny_bert()
    batch = text_batch()
    with torch.no_grad():
        h = model(**batch).last_hidden_state
        m = batch["attention_mask"][..., None].float()
        ref = (h * m).sum(1) / m.sum(1)
        assert torch.allclose(Forward(spec)(batch), ref, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_weights_quantize_into_their_width(bits):
    w = torch.randn(16, 32) * 3
    q = quantize_weight(w, weight_scales(w, bits), bits)
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    assert (np.abs(q).max(axis=1) == 2 ** (bits - 1) - 1).all()  # min/max uses the full range


@pytest.mark.parametrize("bad", [1, 9, 0, "4", True])
def test_bit_widths_out_of_range_are_refused(bad):
    with pytest.raises(QuantError, match="wbits"):
        check_bits("wbits", bad)


def test_dyadic_multiplier_is_16_bit_and_close():
    m = np.array([0.5, 0.999999, 1e-3, 3.7e-7, 0.75])
    M, s = dyadic(m)
    assert (M < 2**16).all() and (M >= 2**15).all() and (s >= 0).all()
    assert np.allclose(M / 2.0**s, m, rtol=2**-15)
    with pytest.raises(QuantError, match="too large"):
        dyadic(2.0**20)


def test_pow2_shift_is_a_pure_shift():
    M, s = pow2_shift(np.array([0.25, 0.3, 1.0, 4.0]))
    assert M.tolist() == [1, 1, 1, 4] and s.tolist() == [2, 2, 0, 0]
    with pytest.raises(QuantError, match="left shift beyond 15"):
        pow2_shift(2.0**20)


def test_gelu_table_matches_gelu_on_its_grid():
    x_qp = QParams(0.05, -20, 8)
    y_qp = QParams(0.03, -100, 8)
    table = gelu_table(x_qp, y_qp)
    codes = np.arange(-128, 128)
    ref = torch.nn.functional.gelu(torch.tensor(x_qp.scale * (codes - x_qp.zero_point))).numpy()
    ref = np.clip(ref, (y_qp.qmin - y_qp.zero_point) * y_qp.scale, (y_qp.qmax - y_qp.zero_point) * y_qp.scale)
    got = (table - y_qp.zero_point) * y_qp.scale
    assert table.max() == y_qp.qmax  # the top of the input range saturates the output grid
    assert np.all(np.abs(got - ref) <= y_qp.scale / 2 + 1e-9)


def test_baseline_is_registered():
    assert "baseline" in method_names()
    with pytest.raises(QuantError, match="unknown method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("bits", [(8, 8), (6, 6), (4, 4), (2, 3)])
def test_lowered_programs_validate_at_every_width(bits):
    _, spec = tiny_vit(depth=1)
    prog = lower(get_method("baseline")(spec, [(image_batch(), None)], *bits, progress=False))
    validate(prog)
    assert {op.attrs["wbits"] for op in prog.ops_of("linear")} == {bits[0]}
    _, bspec = tiny_bert()
    validate(lower(get_method("baseline")(bspec, [(text_batch(), None)], *bits, progress=False)))


def test_residual_stream_and_unit_widths_are_stated_in_the_program():
    _, spec = tiny_vit(depth=1)
    prog = lower(get_method("baseline")(spec, [(image_batch(), None)], 4, 4, progress=False))
    assert prog.meta["residual_bits"] == 16 and prog.meta["gelu_in_bits"] == 8 and prog.meta["code_bits"] == 4
    assert prog.tensors["blocks.0.res1"].bits == 16
    assert prog.tensors["blocks.0.ln1"].bits == 4
    assert prog.tensors["blocks.0.probs"].bits == 4 and not prog.tensors["blocks.0.probs"].signed
