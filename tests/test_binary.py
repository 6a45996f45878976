"""The binary MAC modes: integer semantics against a float reference on ±1 values, the op registry, the cost model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import engine, intops, timing
from sim.accel import load_accel
from sim.cycles import program_cycles
from sim.energy import program_energy
from sim.program import IntegerProgram, Op, ProgramError, TensorSpec, validate


def _bits(rng, shape):
    return rng.integers(0, 2, shape).astype(np.uint8)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 700), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_xnor_popcount_is_the_float_product_of_plus_minus_one_values(m, k, n, seed):
    rng = np.random.default_rng(seed)
    x, w = _bits(rng, (m, k)), _bits(rng, (n, k))
    bias = rng.integers(-1000, 1000, n)
    xf, wf = np.where(x == 1, 1.0, -1.0), np.where(w == 1, 1.0, -1.0)
    assert np.array_equal(intops.xnor_popcount(x, w, bias), (xf @ wf.T + bias).astype(np.int64))
    # and literally 2 * popcount(XNOR) - K
    agree = (x[:, None, :] == w[None, :, :]).sum(-1)
    assert np.array_equal(intops.xnor_popcount(x, w), 2 * agree - k)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 700), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_and_popcount_is_the_float_product_of_zero_one_and_plus_minus_one_values(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a, w = _bits(rng, (m, k)), _bits(rng, (n, k))
    wf = np.where(w == 1, 1.0, -1.0)
    assert np.array_equal(intops.and_popcount(a, w), (a.astype(float) @ wf.T).astype(np.int64))
    both = (a[:, None, :] & w[None, :, :]).sum(-1).astype(np.int64)
    assert np.array_equal(intops.and_popcount(a, w), 2 * both - a.sum(-1).astype(np.int64)[:, None])


def test_binary_matmul_batches_heads_like_the_float_product():
    rng = np.random.default_rng(1)
    q, k = _bits(rng, (2, 3, 7, 32)), _bits(rng, (2, 3, 7, 32))
    sq, sk = np.where(q == 1, 1.0, -1.0), np.where(k == 1, 1.0, -1.0)
    scores = intops.binary_matmul(q, np.swapaxes(k, -1, -2), "xnor")
    assert np.array_equal(scores, (sq @ np.swapaxes(sk, -1, -2)).astype(np.int64))
    amap = intops.bi_attention(scores)
    v = _bits(rng, (2, 3, 7, 32))
    ctx = intops.binary_matmul(amap, v, "and")
    assert np.array_equal(ctx, (amap.astype(float) @ np.where(v == 1, 1.0, -1.0)).astype(np.int64))


def test_binarize_takes_sign_zero_as_plus_one_and_a_per_channel_threshold():
    x = np.array([[-3, -1, 0, 1, 5]])
    assert binarize_list(x, 0) == [0, 0, 1, 1, 1]
    assert binarize_list(x, np.array([-3, 0, 1, 1, 6])) == [1, 0, 0, 1, 0]


def binarize_list(x, t):
    return intops.binarize(x, t).ravel().tolist()


def test_bi_attention_zeroes_masked_keys():
    scores = np.array([[[3, -2, 0, 7]]])
    valid = np.array([[[True, True, True, False]]])
    assert intops.bi_attention(scores, valid).ravel().tolist() == [1, 0, 1, 0]


def test_binary_embedding_is_a_signed_row_magnitude():
    bits = np.array([[1, 0, 1], [0, 0, 1]], np.uint8)
    scale = np.array([5, 300], np.int16)
    assert intops.binary_embedding(np.array([1, 0]), bits, scale).tolist() == [[-300, -300, 300], [5, -5, 5]]


# ---------------------------------------------------------------- the registry and the cost model
def _program(k: int = 384, n: int = 64, t: int = 16) -> IntegerProgram:
    """x (int16) -> binarize -> xnor binary_linear -> requant, the shape of a binarized encoder's linear."""
    rng = np.random.default_rng(0)
    tensors = {
        "x": TensorSpec("x", 16, True, (t, k)),
        "xb": TensorSpec("xb", 1, False, (t, k)),
        "acc": TensorSpec("acc", 32, True, (t, n)),
        "y": TensorSpec("y", 16, True, (t, n)),
    }
    ops = [
        Op("binarize", "x.sign", ["x"], ["xb"], {}, {"threshold": np.zeros(1, np.int32)}),
        Op("binary_linear", "fc", ["xb"], ["acc"], {"mode": "xnor"},
           {"weight": _bits(rng, (n, k)), "bias": rng.integers(-50, 50, n).astype(np.int32)}),
        Op("requant", "fc.requant", ["acc"], ["y"], {"out_bits": 16, "signed": True, "zero_point": 0, "pow2": False},
           {"m": np.full(1, 1 << 14, np.int32), "shift": np.full(1, 10, np.int32)}),
    ]
    program = IntegerProgram("binary-test", [tensors["x"]], ["y"], tensors, ops, {})
    validate(program)
    return program


def test_engine_runs_a_binary_linear_as_the_float_plus_minus_one_product():
    program = _program()
    rng = np.random.default_rng(2)
    x = rng.integers(-3000, 3000, (2, 16, 384))
    out = engine.run(program, {"x": x}).outputs["y"]
    op = program.ops[1]
    xs = np.where(x >= 0, 1.0, -1.0)
    ws = np.where(op.params["weight"] == 1, 1.0, -1.0)
    acc = (xs @ ws.T + op.params["bias"]).astype(np.int64)
    assert np.array_equal(out, intops.requantize(acc, np.array([1 << 14]), np.array([10]), 16))


def test_a_binary_linear_refuses_a_multi_bit_input_naming_the_field():
    program = _program()
    program.tensors["xb"] = TensorSpec("xb", 2, False, (16, 384))
    with pytest.raises(ProgramError, match=r"\(binary_linear\).*1-bit operands"):
        validate(program)


def test_a_binary_linear_refuses_an_unknown_mode():
    program = _program()
    program.ops[1].attrs["mode"] = "xor"
    with pytest.raises(ProgramError, match="field 'mode'.*accepted: xnor, and"):
        validate(program)


@pytest.mark.parametrize("accel", ["edge-int4", "edge-int8"])
def test_a_binary_linear_packs_its_reduction_into_the_array_and_costs_less_than_int4(accel):
    a = load_accel(accel)
    program = _program()
    costs = program_cycles(program, a)
    fc = next(o for o in costs.ops if o.name == "fc")
    pack = timing.binary_pack(a.array.act_bits, a.array.weight_bits)
    assert fc.compute_cycles == timing.gemm_cycles(16, 384 // pack, 64, a.array.rows, a.array.cols)
    assert fc.macs == 16 * 384 * 64 and fc.array_macs == fc.macs // pack
    table = program_energy(costs, a).table_pj
    assert table["binary_mac"] / pack < table["mac"] / 4  # per product, under a quarter of the int MAC
