"""The fast paths of sim.intops (int8 GEMMs, float BLAS under a bound, int32 / int16 torch arithmetic)
against a plain int64 numpy reference: worst-case operands at every rail and path boundary, and random ones.

The reference functions below are the definitions written out in int64 numpy (the intops of before
the fast paths), with no float and no narrow integer anywhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import intops

I32 = 1 << 31


# ----------------------------------------------------------------------------- the int64 reference
def ref_matmul(a, b):
    return np.matmul(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))


def ref_half_up_shift(y, shift):
    shift = np.asarray(shift, dtype=np.int64)
    rc = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return (y + rc) >> shift


def ref_requantize(x, m, shift, out_bits, zp=0, signed=True):
    y = np.asarray(x, dtype=np.int64) * np.asarray(m, dtype=np.int64)
    y = ref_half_up_shift(y, shift) + np.asarray(zp, dtype=np.int64)
    return np.clip(y, *intops.int_range(out_bits, signed))


def ref_add(a, b, ma, mb, shift, out_bits):
    y = np.asarray(a, dtype=np.int64) * ma + np.asarray(b, dtype=np.int64) * mb
    return np.clip(ref_half_up_shift(y, shift), *intops.int_range(out_bits))


def ref_isqrt(v):
    return np.array([math.isqrt(int(t)) for t in np.ravel(v)], dtype=np.int64).reshape(np.shape(v))


def ref_layernorm(x, gamma, beta, shift, out_bits, frac_bits=10, recip_bits=30, in_shift=None):
    x = np.asarray(x, dtype=np.int64)
    if in_shift is not None:
        x = x << np.asarray(in_shift, dtype=np.int64)
    n = x.shape[-1]
    mean = (x.sum(axis=-1, keepdims=True) + n // 2) // n
    d = x - mean
    std = np.maximum(ref_isqrt((d * d).sum(axis=-1, keepdims=True) // n), 1)
    ns = recip_bits - frac_bits
    z = np.clip(((d * ((1 << recip_bits) // std)) + (1 << (ns - 1))) >> ns, -(1 << 15), (1 << 15) - 1)
    y = ref_half_up_shift(z * np.asarray(gamma, dtype=np.int64) + np.asarray(beta, dtype=np.int64), shift)
    return np.clip(y, *intops.int_range(out_bits))


def ref_log2_fixed(s, frac_bits=6, log_bits=6):
    s = np.asarray(s, dtype=np.int64)
    p = np.zeros_like(s)
    for bit in range(62, -1, -1):
        p = np.where((p == 0) & (s >> bit > 0), bit, p)
    mant = np.where(p >= log_bits, s >> np.maximum(p - log_bits, 0), s << np.maximum(log_bits - p, 0))
    return (p << frac_bits) + intops.log2_table(log_bits, frac_bits)[mant & ((1 << log_bits) - 1)]


def ref_softmax_log2(t, valid=None, code_bits=4, frac_bits=6, exp_bits=15, sqrt2=False):
    t = np.asarray(t, dtype=np.int64)
    zero_code = (1 << code_bits) - 1
    if valid is not None:
        valid = np.broadcast_to(np.asarray(valid, dtype=bool), t.shape)
        t = np.where(valid, t, np.iinfo(np.int64).min // 4)
    d = t.max(axis=-1, keepdims=True) - t
    if valid is not None:
        d = np.where(valid, d, 0)
    e = intops.exp2_table(frac_bits, exp_bits)[d & ((1 << frac_bits) - 1)] >> np.minimum(d >> frac_bits, 63)
    if valid is not None:
        e = np.where(valid, e, 0)
    s = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    q = ref_log2_fixed(s, frac_bits) - (exp_bits << frac_bits) + d
    q = np.clip(((2 * q if sqrt2 else q) + (1 << (frac_bits - 1))) >> frac_bits, 0, zero_code)
    return q if valid is None else np.where(valid, q, zero_code)


def ref_log2_weights(codes, code_bits=4, sqrt2=False):
    c = np.asarray(codes, dtype=np.int64)
    k = intops.log2_acc_shift(code_bits, sqrt2)
    if sqrt2:
        w = np.where(c % 2 == 0, np.left_shift(1, np.maximum(k - c // 2, 0)),
                     (np.left_shift(1, np.maximum(k - (c - 1) // 2, 0)) * 181) >> 8)
    else:
        w = np.left_shift(1, np.maximum(k - c, 0))
    return np.where(c <= (1 << code_bits) - 2, w, 0)


def same(got, want):
    """Equal values (whatever the result dtype), and a result dtype that holds them."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.issubdtype(got.dtype, np.signedinteger), got.dtype
    bad = np.flatnonzero(got.astype(np.int64).ravel() != want.ravel())
    assert bad.size == 0, f"{bad.size} differ, first at {bad[0]}: got {got.ravel()[bad[0]]}, want {want.ravel()[bad[0]]}"


def rails(bits, shape, rng, signed=True):
    """Random values drawn mostly from the two rails of a ``bits``-wide range."""
    lo, hi = intops.int_range(bits, signed)
    return rng.choice(np.array([lo, hi, lo + 1, hi - 1, 0, rng.integers(lo, hi + 1)]), shape)


# ----------------------------------------------------------------------------- products
@pytest.fixture(params=["int8-gemm", "float-blas"])
def gemm(request, monkeypatch):
    """Each product test runs on both routes: torch's int8 GEMM (taken only where it is faster than float32
    BLAS on the machine, so forced here) and float BLAS under its bound."""
    if request.param == "int8-gemm" and not hasattr(torch, "_int_mm"):
        pytest.skip("this torch has no int8 GEMM")
    monkeypatch.setattr(intops, "_INT_MM", [request.param == "int8-gemm"])
    return request.param


@pytest.mark.parametrize("k", [1, 7, 384, 4096, (1 << 17) - 1])
@pytest.mark.usefixtures("gemm")
def test_int8_gemm_is_exact_at_the_most_negative_operands(k):
    a = np.full((3, k), -128, dtype=np.int8)
    w = np.full((2, k), -128, dtype=np.int8)
    got = intops.accumulate(a, w)
    same(got, np.full((3, 2), k * 128 * 128))
    assert got.dtype == np.int32  # k * 2**14 < 2**31: the int8 GEMM's own accumulator holds it


@pytest.mark.usefixtures("gemm")
def test_int8_gemm_past_its_k_limit_falls_back_exactly():
    k = 1 << 17  # k * 2**14 = 2**31 does not fit int32
    a = np.full((2, k), -128, dtype=np.int8)
    w = np.full((3, k), -128, dtype=np.int8)
    got = intops.accumulate(a, w)
    same(got, np.full((2, 3), k * 128 * 128))
    assert got.dtype == np.int64


@pytest.mark.parametrize("lo,hi", [(0, 255), (-200, 55), (1000, 1255), (0, 15), (1 << 20, (1 << 20) + 255)])
@pytest.mark.usefixtures("gemm")
def test_int8_gemm_takes_any_256_wide_activation_range(lo, hi):
    rng = np.random.default_rng(lo & 0xFFFF)
    x = rng.choice(np.array([lo, hi, rng.integers(lo, hi + 1)]), (37, 1536)).astype(np.int16)
    w = rails(8, (19, 1536), rng).astype(np.int8)
    bias = rng.integers(-(2**20), 2**20, 19)
    same(intops.accumulate(x, w, bias), ref_matmul(x, w.T) + bias)


@pytest.mark.parametrize("bias_max", [0, 2**20, 2**31 - 1 - 384 * 128 * 128, 2**31 - 1])
@pytest.mark.usefixtures("gemm")
def test_accumulator_bias_at_the_int32_rail(bias_max):
    x = np.full((4, 384), -128, dtype=np.int8)
    w = np.full((3, 384), -128, dtype=np.int8)
    bias = np.array([bias_max, -bias_max, 0])
    got = intops.accumulate(x, w, bias)
    same(got, ref_matmul(x, w.T) + bias)
    # int32 only where the bound proves the sum fits; then the engine skips its saturation check
    assert (got.dtype == np.int32) == (384 * 128 * 128 + bias_max < I32)
    same(intops.linear(x, w, bias), np.clip(ref_matmul(x, w.T) + bias, -I32, I32 - 1))


@pytest.mark.usefixtures("gemm")
def test_batched_int8_loop_matches_int64_at_rails_and_random():
    rng = np.random.default_rng(1)
    for shape_a, shape_b in (((2, 3, 197, 64), (2, 3, 64, 197)), ((1, 2, 96, 4096), (1, 2, 4096, 80))):
        a = rails(8, shape_a, rng).astype(np.int8)
        b = rails(8, shape_b, rng).astype(np.int8)
        same(intops.exact_matmul(a, b), ref_matmul(a, b))
        same(intops.exact_matmul(a, np.swapaxes(b.copy(), -1, -2).copy().swapaxes(-1, -2)), ref_matmul(a, b))
    a = np.full((2, 256, 1 << 16), -128, dtype=np.int8)[:, :8]
    b = np.full((2, 1 << 16, 40), -128, dtype=np.int8)
    same(intops.exact_matmul(a, b), np.full((2, 8, 40), (1 << 16) * 128 * 128))


@pytest.mark.usefixtures("gemm")
def test_float_gemm_row_sum_bound_is_exact_at_its_limit():
    # attention weights up to 2**14 against 8-bit V: K*max*max is past 2**24, row sums are not
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 16, (2, 3, 197, 197))
    codes[..., 0] = 0
    w = intops.log2_weights(codes)
    v = rails(8, (2, 3, 197, 64), rng).astype(np.int8)
    same(intops.exact_matmul(w, v), ref_matmul(ref_log2_weights(codes), v))
    # rows whose magnitude sum is 2**24 - 1 exactly: the largest float32 partial sums allowed
    a = np.zeros((2, 1, 4, 1024), dtype=np.int64)
    a[..., :1023] = (1 << 14) - 1
    a[..., 1023] = (1 << 24) - 1 - 1023 * ((1 << 14) - 1)
    b = np.ones((2, 1, 1024, 3), dtype=np.int64)
    same(intops.exact_matmul(a, b), ref_matmul(a, b))
    same(intops.exact_matmul(a, -b), ref_matmul(a, -b))
    a[..., 1023] += 1  # one past: float64 or blocks, still exact
    same(intops.exact_matmul(a, b), ref_matmul(a, b))


@pytest.mark.parametrize("bits,k", [(4, 1 << 16), (8, 4096), (12, 3000), (16, 2048), (24, 64), (31, 5)])
@pytest.mark.usefixtures("gemm")
def test_exact_matmul_worst_case_every_width(bits, k):
    lo, hi = intops.int_range(bits)
    for sa, sb in ((lo, lo), (hi, lo), (lo, hi)):
        a = np.full((2, 1, k), sa)
        b = np.full((2, k, 3), sb)
        same(intops.exact_matmul(a, b), ref_matmul(a, b))
        same(intops.exact_matmul(a[0], b[0]), ref_matmul(a[0], b[0]))


@pytest.mark.usefixtures("gemm")
def test_float_gemm_ignores_a_reduced_precision_setting():
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # would allow bf16 / TF32 GEMMs
    try:
        a = np.full((2, 4, 256), (1 << 8) - 1)  # 256 * 255 * 255 < 2**24, inexact in bf16
        b = np.full((2, 256, 5), 255)
        b[..., 0] = 253
        same(intops.exact_matmul(a, b), ref_matmul(a, b))
        assert torch.get_float32_matmul_precision() == "medium"  # restored
    finally:
        torch.set_float32_matmul_precision(prev)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 700), n=st.integers(1, 30), abits=st.sampled_from([4, 8, 9, 16]),
       wbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**16))
@pytest.mark.usefixtures("gemm")
def test_accumulate_random_widths_match_int64(m, k, n, abits, wbits, seed):
    rng = np.random.default_rng(seed)
    x = rails(abits, (m, k), rng, signed=seed % 2 == 0)
    w = rails(wbits, (n, k), rng)
    bias = rng.integers(-(2**31), 2**31, n)
    same(intops.accumulate(x, w, bias), ref_matmul(x, w.T) + bias)


# ----------------------------------------------------------------------------- requantization
@pytest.mark.parametrize("xbits", [8, 16, 23, 24, 31, 32])
def test_requantize_every_path_at_the_rails(xbits):
    rng = np.random.default_rng(xbits)
    x = rails(xbits, (64, 48), rng)
    m = rails(16, 48, rng, signed=False)
    for shift in (np.arange(48) % 23, np.full(48, 40), np.arange(48) + 15, np.zeros(48, np.int64)):
        for zp in (0, -3, np.arange(48) - 24):
            for out_bits, signed in ((4, True), (8, False), (16, True), (32, True)):
                got = intops.requantize(x, m, shift, out_bits, zp, signed)
                same(got, ref_requantize(x, m, shift, out_bits, zp, signed))
                assert got.dtype == intops.out_dtype(out_bits, signed)


def test_requantize_two_step_split_boundary():
    # |x| just inside and just outside what the int32 split (k = 8) can take, m at its maximum
    for xmax in ((1 << 23) - 300, (1 << 23) + 300, (1 << 31) - 1):
        x = np.array([[xmax, -xmax, xmax - 1, 1 - xmax, 0, 1, -1, 255, -256]], dtype=np.int64)
        for m, s in ((65535, 8), (65535, 16), (32769, 30), (1, 8)):
            same(intops.requantize(x.astype(np.int32), m, s, 16), ref_requantize(x, m, s, 16))


@settings(max_examples=200, deadline=None)
@given(xbits=st.integers(2, 32), m=st.integers(0, 2**16 - 1), shift=st.integers(0, 62), out_bits=st.integers(2, 32),
       zp=st.integers(-2**15, 2**15 - 1), signed=st.booleans(), seed=st.integers(0, 2**16))
def test_requantize_random_matches_int64(xbits, m, shift, out_bits, zp, signed, seed):
    rng = np.random.default_rng(seed)
    x = rails(xbits, (5000,), rng).astype(intops.out_dtype(xbits))
    lo, hi = intops.int_range(out_bits, signed)
    zp = min(max(zp, lo), hi)
    same(intops.requantize(x, m, shift, out_bits, zp, signed), ref_requantize(x, m, shift, out_bits, zp, signed))


@settings(max_examples=150, deadline=None)
@given(abits=st.sampled_from([8, 16, 17]), ma=st.integers(0, 2**16 - 1), mb=st.integers(0, 2**16 - 1),
       shift=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_add_random_and_rails_match_int64(abits, ma, mb, shift, seed):
    rng = np.random.default_rng(seed)
    a = rails(abits, (3, 2000), rng).astype(intops.out_dtype(abits))
    b = rails(abits, (3, 2000), rng).astype(intops.out_dtype(abits))
    got = intops.add(a, b, ma, mb, shift, 16)
    same(got, ref_add(a, b, ma, mb, shift, 16))
    assert got.dtype == np.int16


# ----------------------------------------------------------------------------- LayerNorm
def _ln_case(x, rng, in_shift=None, out_bits=8):
    n = x.shape[-1]
    for gamma, beta, shift in ((np.full(n, 26888), np.zeros(n, np.int64), 24),
                               (rails(16, n, rng), rails(32, n, rng) // 2, 30),
                               (np.full(n, -(1 << 15)), np.full(n, (1 << 31) - 1), 0),  # affine past int32
                               (np.ones(n, np.int64), np.zeros(n, np.int64), 0)):
        for frac_bits, recip_bits in ((10, 30), (14, 30), (1, 24)):
            got = intops.layernorm(x, gamma, beta, shift, out_bits, frac_bits, recip_bits, in_shift)
            same(got, ref_layernorm(x, gamma, beta, shift, out_bits, frac_bits, recip_bits, in_shift))


@pytest.mark.parametrize("n", [1, 2, 48, 384, 4096])
def test_layernorm_rails_outliers_and_constant_rows(n):
    rng = np.random.default_rng(n)
    lo, hi = intops.int_range(16)
    rows = [rails(16, n, rng), np.full(n, lo), np.full(n, hi), rng.integers(-40, 40, n),
            np.where(np.arange(n) == 0, lo, hi), np.where(np.arange(n) == n // 2, hi, 0),
            np.where(np.arange(n) % 2 == 0, lo, hi), np.full(n, 1234)]
    x = np.stack(rows).astype(np.int16)
    for out_bits in (4, 8, 16, 32):
        _ln_case(x, rng, out_bits=out_bits)


def test_layernorm_power_of_two_factors_and_wide_inputs():
    rng = np.random.default_rng(5)
    x = rails(13, (6, 384), rng).astype(np.int16)
    _ln_case(x, rng, in_shift=rng.integers(0, 4, 384))
    wide = rails(20, (4, 96), rng)  # beyond int16: the int64 path
    _ln_case(wide, rng)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 800), rows=st.integers(1, 8), xbits=st.integers(2, 16), seed=st.integers(0, 2**16))
def test_layernorm_random_matches_int64(n, rows, xbits, seed):
    rng = np.random.default_rng(seed)
    x = rails(xbits, (rows, n), rng).astype(np.int16)
    g, b = rails(16, n, rng), rails(24, n, rng)
    same(intops.layernorm(x, g, b, 20, 8), ref_layernorm(x, g, b, 20, 8))


def test_isqrt_float_guess_is_exact_around_every_square():
    r = np.concatenate([np.arange(0, 5000), np.array([(1 << 26) - 1, 1 << 25, 94906265, 67108863])])
    r = r[r * r < 1 << 52]
    v = np.unique(np.concatenate([r * r - 1, r * r, r * r + 1, (r + 1) * (r + 1) - 1]))
    v = v[(v >= 0) & (v < 1 << 52)]
    same(intops.isqrt(v), ref_isqrt(v))
    big = np.array([(1 << 62) - 1, (1 << 61) + 12345, 2147483647**2, 2147483647**2 - 1, (1 << 52) + 1])
    same(intops.isqrt(big, bits=62), ref_isqrt(big))  # past 52 bits: the bit-by-bit loop


def test_log2_fixed_binary_search_matches_the_priority_encoder():
    s = np.unique(np.concatenate([np.arange(-3, 70000), *[[(1 << p) - 1, 1 << p, (1 << p) + 1] for p in range(1, 63)]]))
    for frac_bits, log_bits in ((6, 6), (4, 3), (10, 8)):
        same(intops.log2_fixed(s, frac_bits, log_bits), ref_log2_fixed(s, frac_bits, log_bits))


# ----------------------------------------------------------------------------- softmax and attention
@pytest.mark.parametrize("code_bits", [2, 3, 4, 5])
@pytest.mark.parametrize("sqrt2", [False, True])
def test_softmax_log2_rails_spreads_and_masks(code_bits, sqrt2):
    rng = np.random.default_rng(code_bits)
    lo, hi = intops.int_range(16)
    t = np.stack([rails(16, 197, rng), rng.integers(-500, 500, 197), np.full(197, lo), np.full(197, hi),
                  np.where(np.arange(197) == 3, hi, lo), rng.integers(hi - 2000, hi + 1, 197),
                  np.arange(197) * 300 - 30000]).astype(np.int16)
    for frac_bits in (6, 1, 4):
        want = ref_softmax_log2(t, None, code_bits, frac_bits, sqrt2=sqrt2)
        got = intops.softmax_log2(t, None, code_bits, frac_bits, sqrt2=sqrt2)
        same(got, want)
        assert got.dtype == np.int8
        for valid in (rng.random((7, 197)) < 0.5, np.zeros((1, 197), bool), np.arange(197) < 5):
            same(intops.softmax_log2(t, valid, code_bits, frac_bits, sqrt2=sqrt2),
                 ref_softmax_log2(t, valid, code_bits, frac_bits, sqrt2=sqrt2))


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 30), cols=st.integers(1, 300), tbits=st.integers(2, 20), code_bits=st.integers(2, 5),
       frac_bits=st.integers(1, 10), exp_bits=st.integers(4, 16), sqrt2=st.booleans(), masked=st.booleans(),
       seed=st.integers(0, 2**16))
def test_softmax_log2_random_matches_int64(rows, cols, tbits, code_bits, frac_bits, exp_bits, sqrt2, masked, seed):
    rng = np.random.default_rng(seed)
    t = rails(tbits, (2, rows, cols), rng).astype(intops.out_dtype(tbits))
    valid = rng.random((2, 1, cols)) < 0.7 if masked else None
    same(intops.softmax_log2(t, valid, code_bits, frac_bits, exp_bits, sqrt2),
         ref_softmax_log2(t, valid, code_bits, frac_bits, exp_bits, sqrt2))


@pytest.mark.parametrize("code_bits", [2, 3, 4, 5])
@pytest.mark.parametrize("sqrt2", [False, True])
def test_log2_weights_every_code_and_out_of_range(code_bits, sqrt2):
    codes = np.arange(1 << code_bits)
    for c in (codes, codes.astype(np.int8).reshape(-1, 1), np.tile(codes, 5000)):
        same(intops.log2_weights(c, code_bits, sqrt2), ref_log2_weights(c, code_bits, sqrt2))
    odd = np.array([-1, 1 << code_bits, 40, 3])  # outside the code range: the definition, as written
    same(intops.log2_weights(odd, code_bits, sqrt2), ref_log2_weights(odd, code_bits, sqrt2))


def test_matmul_log2_worst_case_weights_and_v():
    v = np.full((1, 2, 4000, 3), -128, dtype=np.int8)
    codes = np.zeros((1, 2, 5, 4000), dtype=np.int8)  # every weight 2**14: sum 4000 * 2**21 needs int64
    same(intops.matmul_log2(codes, v), np.clip(ref_matmul(ref_log2_weights(codes), v), -I32, I32 - 1))
    same(intops.exact_matmul(intops.log2_weights(codes), v), ref_matmul(ref_log2_weights(codes), v))


# ----------------------------------------------------------------------------- tables
@pytest.mark.parametrize("in_bits", [8, 4, 10])
def test_gelu_every_input_code(in_bits):
    rng = np.random.default_rng(in_bits)
    lo, hi = intops.int_range(in_bits)
    table = rng.integers(-(2**15), 2**15, 1 << in_bits)
    for x in (np.arange(lo, hi + 1), np.tile(np.arange(lo, hi + 1), 3000).astype(intops.out_dtype(in_bits))):
        same(intops.gelu(x, table, in_bits), table[np.asarray(x, np.int64) + (1 << (in_bits - 1))])


def test_results_come_in_the_narrowest_dtype_of_their_width():
    x = np.arange(-300, 300).reshape(2, 300)
    assert intops.requantize(x, 1, 2, 4).dtype == np.int8
    assert intops.requantize(x, 1, 0, 8, signed=False).dtype == np.int16  # [0, 255]
    assert intops.saturate(x, 16).dtype == np.int16 and intops.saturate(x, 40).dtype == np.int64
    assert intops.add(x, x, 1, 1, 0, 16).dtype == np.int16
    assert intops.softmax_log2(x).dtype == np.int8
    assert intops.layernorm(x, np.ones(300), np.zeros(300), 0, 4).dtype == np.int8
    same(intops.saturate(x * 1000, 16), np.clip(x * 1000, -(2**15), 2**15 - 1))


def test_fallbacks_and_edges_match_int64():
    rng = np.random.default_rng(9)
    x3 = rails(8, (2, 5, 64), rng).astype(np.int8)  # [..., K] activations against [K, N]
    w = rails(8, (7, 64), rng).astype(np.int8)
    same(intops.exact_matmul(x3, w.T), ref_matmul(x3, w.T))
    same(intops.matmul(x3, w.T, acc_bits=12), np.clip(ref_matmul(x3, w.T), -(2**11), 2**11 - 1))
    same(intops.exact_matmul(np.zeros((3, 0), np.int8), np.zeros((0, 4), np.int8)), np.zeros((3, 4)))
    big_zp = np.array([[5, -5]])
    same(intops.requantize(big_zp, 3, 61, 32, -(2**31)), ref_requantize(big_zp, 3, 61, 32, -(2**31)))
    wide = rails(20, (3, 40), rng)
    sh = rng.integers(0, 4, 40)
    g, b = rails(16, 40, rng), rails(24, 40, rng)
    same(intops.layernorm(wide, g, b, 3, 16, in_shift=sh), ref_layernorm(wide, g, b, 3, 16, in_shift=sh))
    same(intops.layernorm(wide[:, :1], g[:1], b[:1], 70, 16), ref_layernorm(wide[:, :1], g[:1], b[:1], 70, 16))
    x16 = rails(16, (4, 1 << 15), rng).astype(np.int16)  # N = 2**15 channels: the int64 path
    g, b = np.ones(1 << 15, np.int64), np.zeros(1 << 15, np.int64)
    same(intops.layernorm(x16, g, b, 0, 16), ref_layernorm(x16, g, b, 0, 16))
    same(intops.layernorm(x16[:, :300], g[:300], b[:300], 0, 16, 1, 40),
         ref_layernorm(x16[:, :300], g[:300], b[:300], 0, 16, 1, 40))  # reciprocal past the int32 split
    same(intops.requantize(np.array([-77, 5 << 40]), 3, 63, 8), ref_requantize(np.array([-77, 5 << 40]), 3, 63, 8))
    big = np.array([1 << 30, -(1 << 30), 12345], dtype=np.int32)  # M > 2**s and |x| too large for the split
    same(intops.requantize(big, 65535, 4, 32), ref_requantize(big, 65535, 4, 32))
    small = rails(4, (3, 40), rng)  # shifts past 15: the int64 path
    same(intops.layernorm(small, g[:40], b[:40], 3, 16, in_shift=sh + 16),
         ref_layernorm(small, g[:40], b[:40], 3, 16, in_shift=sh + 16))
    ones = np.tile([0, 1], (2, 20))  # std 1: a reciprocal of 2**46 is past the int32 split
    same(intops.layernorm(ones, g[:40], b[:40], 0, 32, 16, 46), ref_layernorm(ones, g[:40], b[:40], 0, 32, 16, 46))
    t = rng.integers(-3000, 3000, (3, 2000))
    for args in ((None, 2, 10, 6, True), (None, 4, 10, 6, True), (None, 4, 15, 15, False),
                 (np.ones((3, 1), bool), 4, 6, 15, False)):
        same(intops.softmax_log2(t, *args), ref_softmax_log2(t, *args))
    with pytest.raises(ValueError):
        intops.softmax_log2(t, np.ones((2, 2000), bool))  # a mask that does not broadcast onto t
    table = np.arange(16) - 8
    same(intops.gelu(np.array([-8, 7, 0]), table, 4), np.array([-8, 7, 0]))
    with pytest.raises(IndexError):
        intops.gelu(np.array([-8, 8]), table, 4)  # outside the ROM, as numpy indexing says


# ----------------------------------------------------------------------------- the engine's batch split
def test_split_batch_gives_the_bits_of_one_run_and_restores_torch_settings():
    from quant.lower import lower
    from quant.methods import get_method
    from quant.quantizers import program_inputs
    from sim import engine
    from tests.tiny_models import image_batch, tiny_vit

    _, spec = tiny_vit()
    program = lower(get_method("baseline")(spec, [(image_batch(), None)], 4, 4, progress=False))
    x = program_inputs(program, image_batch(7, seed=11))
    keep = [n for op in program.ops for n in op.outputs][::7]
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_num_threads(1)
    try:
        whole = engine.run(program, x, keep=keep)
    finally:
        torch.set_num_threads(threads)
    for n in (2, 3, 7):
        torch.set_num_threads(n)
        try:
            split = engine.run(program, x, keep=keep)
            assert torch.get_num_threads() == n and torch.get_float32_matmul_precision() == precision
        finally:
            torch.set_num_threads(threads)
        assert split.outputs.keys() == whole.outputs.keys() and split.overflows == whole.overflows
        for name, y in whole.outputs.items():
            assert split.outputs[name].dtype == np.int64 and np.array_equal(split.outputs[name], y), name
