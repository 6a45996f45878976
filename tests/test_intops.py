"""Property tests of every integer op against a high-precision reference, with the error bound stated."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sim import intops, widths

INT32 = st.integers(-(2**31), 2**31 - 1)


def _half_up(num: int, shift: int) -> int:
    """floor(num / 2**shift + 1/2) with Python's unbounded integers."""
    return (num + (1 << (shift - 1))) >> shift if shift else num


@settings(max_examples=300, deadline=None)
@given(x=st.lists(INT32, min_size=1, max_size=32), m=st.integers(0, 2**16 - 1), shift=st.integers(0, 62),
       out_bits=st.integers(2, 32), zp=st.integers(-2, 2))
def test_requantize_is_round_half_up_then_saturate(x, m, shift, out_bits, zp):
    lo, hi = intops.int_range(out_bits)
    got = intops.requantize(np.array(x), m, shift, out_bits, zp)
    want = [min(max(_half_up(v * m, shift) + zp, lo), hi) for v in x]
    assert got.tolist() == want


@settings(max_examples=200, deadline=None)
@given(x=st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=16),
       real=st.floats(1e-6, 0.99, allow_nan=False))
def test_requantize_within_half_lsb_plus_multiplier_rounding(x, real):
    from quant.quantizers import dyadic

    (m,), (shift,) = dyadic(real)
    got = intops.requantize(np.array(x), int(m), int(shift), 32)
    for v, y in zip(x, got.tolist()):
        # 0.5 LSB of rounding plus |x| times the error of the 16-bit multiplier
        assert abs(y - v * real) <= 0.5 + abs(v) * abs(m / 2**shift - real) + 1e-9


def test_requantize_saturates_at_int4_bounds():
    assert intops.requantize(np.array([10**6, -(10**6)]), 1, 0, 4).tolist() == [7, -8]


@settings(max_examples=200, deadline=None)
@given(a=st.integers(-(2**15), 2**15 - 1), b=st.integers(-(2**15), 2**15 - 1),
       ma=st.integers(0, 2**16 - 1), mb=st.integers(0, 2**16 - 1), shift=st.integers(0, 40))
def test_add_aligns_then_rounds_half_up(a, b, ma, mb, shift):
    got = int(intops.add(np.array([a]), np.array([b]), ma, mb, shift, 16)[0])
    assert got == min(max(_half_up(a * ma + b * mb, shift), -(2**15)), 2**15 - 1)


@settings(max_examples=300, deadline=None)
@given(v=st.integers(0, 2**48 - 1))
def test_isqrt_is_exact_floor(v):
    assert int(intops.isqrt(np.array([v]))[0]) == math.isqrt(v)


@settings(max_examples=150, deadline=None)
@given(rows=arrays(np.int64, (3, 48), elements=st.integers(-(2**15), 2**15 - 1)))
def test_layernorm_normalized_value_within_bound(rows):
    k = widths.LN_NORM_FRAC_BITS
    ones = np.ones(48, dtype=np.int64)
    n = intops.layernorm(rows, ones, np.zeros(48, dtype=np.int64), 0, 32)
    for x, got in zip(rows.astype(np.float64), n):
        sigma = x.std()
        if sigma < 16:  # small variances: only check the range; below 16 LSB the bound is meaningless
            assert np.all(np.abs(got) <= 2**15)
            continue
        z = (x - x.mean()) / sigma
        # mean rounding (0.5 LSB), floor of var and sqrt (<= 1.5 LSB of std), final rounding (0.5)
        bound = 1.0 + 2**k * (0.5 + 1.5 * np.abs(z)) / sigma
        assert np.all(np.abs(got - np.clip(z * 2**k, -(2**15), 2**15 - 1)) <= bound)


def test_layernorm_zero_variance_row_gives_beta():
    x = np.full((2, 8), 1234)
    y = intops.layernorm(x, np.full(8, 77), np.arange(8) * 16, 4, 8)
    assert y.tolist() == [list(range(8))] * 2


@settings(max_examples=200, deadline=None)
@given(t=arrays(np.int64, (2, 17), elements=st.integers(-4000, 4000)), code_bits=st.sampled_from([3, 4, 5]))
def test_softmax_log2_codes_within_one_of_exact(t, code_bits):
    f = widths.SOFTMAX_FRAC_BITS
    q = intops.softmax_log2(t, code_bits=code_bits)
    zero = (1 << code_bits) - 1
    for row, codes in zip(t, q):
        logp = row / 2**f - np.log2(np.sum(np.exp2((row - row.max()) / 2**f))) - row.max() / 2**f
        exact = np.clip(np.round(-logp), 0, zero)
        assert np.all(np.abs(codes - exact) <= 1)
        assert codes[np.argmax(row)] <= 1 + math.log2(len(row))


def test_softmax_all_equal_row_and_masked_positions():
    t = np.zeros((1, 8), dtype=np.int64)
    assert intops.softmax_log2(t).tolist() == [[3] * 8]  # p = 1/8
    valid = np.array([[True, True, False, False, False, False, False, False]])
    assert intops.softmax_log2(t, valid).tolist() == [[1, 1] + [15] * 6]
    assert intops.softmax_log2(t, np.zeros((1, 8), dtype=bool)).tolist() == [[15] * 8]


TULQ = st.tuples(st.integers(0, 3), st.integers(1, 5), st.integers(5, widths.MAX_TULQ_GRID_BITS),
                 st.booleans()).filter(lambda k: k[0] <= k[1] <= k[2])


@settings(max_examples=300, deadline=None)
@given(t=arrays(np.int64, (3, 19), elements=st.integers(-3000, 3000)), levels=TULQ)
def test_softmax_tulq_is_log2_below_the_knee_and_uniform_above(t, levels):
    """Below the knee the level is what softmax_log2's code (base 2 or sqrt(2)) stands for on the grid,
    truncated past it; above it, p rounded to steps of 2**-step_bits, within half a step plus the fixed
    point's error."""
    knee, step, grid, sqrt2 = levels
    f = widths.SOFTMAX_FRAC_BITS
    y = intops.softmax_tulq(t, None, knee, step, grid, sqrt2=sqrt2)
    codes = intops.softmax_log2(t, code_bits=5, sqrt2=sqrt2).astype(np.int64)
    logp = (t - t.max(-1, keepdims=True)) / 2**f
    p = np.exp2(logp) / np.exp2(logp).sum(-1, keepdims=True)
    if sqrt2:
        half = np.where(codes % 2 == 0, np.int64(256), intops.SQRT_HALF_Q8)
        shifted = half << np.clip(grid - (codes + 1) // 2 + (codes % 2), 0, None)
        log_level = np.where(codes <= 2 * grid, (shifted + 128) >> 8, 0)
    else:
        log_level = np.where(codes <= grid, np.int64(1) << np.clip(grid - codes, 0, None), 0)
    below = p < 2.0 ** -knee * 0.99  # clear of the knee, where the fixed-point log2 may fall either side
    above = p > 2.0 ** -knee * 1.01
    assert np.array_equal(y[below], log_level[below])
    step_size = 1 << (grid - step)
    assert np.all(y[above] % step_size == 0)
    # the log2 of the row sum looks at 6 mantissa bits (up to 1.6 % in p), the exp ROM rounds: 3 % of p
    assert np.all(np.abs(y[above] / 2**grid - p[above]) <= 2.0 ** -step / 2 + 0.03 * p[above])
    assert np.unique(y).size <= intops.tulq_levels(knee, step, grid, sqrt2)
    assert y.min() >= 0 and y.max() <= 1 << grid


def test_softmax_tulq_masked_keys_and_empty_rows_write_zero_and_bad_levels_are_refused():
    t = np.zeros((2, 8), dtype=np.int64)
    valid = np.array([[True, True] + [False] * 6, [False] * 8])
    y = intops.softmax_tulq(t, valid, knee=1, step_bits=3, grid_bits=8)
    assert y.tolist() == [[128, 128] + [0] * 6, [0] * 8]  # p = 1/2 on the uniform grid of 1/8 (2**8 / 2)
    for bad in ((2, 1, 8), (0, 3, 2), (0, 3, widths.MAX_TULQ_GRID_BITS + 1), (0, widths.SOFTMAX_EXP_BITS, 16)):
        with pytest.raises(ValueError, match="softmax_tulq"):
            intops.softmax_tulq(t, None, *bad)


@settings(max_examples=100, deadline=None)
@given(codes=arrays(np.int64, (3, 9), elements=st.integers(0, 15)), v=arrays(np.int64, (9, 5), elements=st.integers(-128, 127)))
def test_matmul_log2_is_a_sum_of_shifts(codes, v):
    got = intops.matmul_log2(codes, v)
    for i in range(3):
        for n in range(5):
            want = sum(int(v[j, n]) << (14 - int(codes[i, j])) for j in range(9) if codes[i, j] < 15)
            assert got[i, n] == want


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([4, 8, 16]), k=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_exact_matmul_matches_int64(bits, k, seed):
    rng = np.random.default_rng(seed)
    lo, hi = intops.int_range(bits)
    a = rng.integers(lo, hi + 1, (3, k))
    b = rng.integers(lo, hi + 1, (k, 4))
    assert np.array_equal(intops.exact_matmul(a, b), a @ b)


def test_exact_matmul_worst_case_operands():
    # most-negative operands everywhere: every partial sum is the largest possible
    for bits, k in ((4, 1 << 16), (8, 4096), (16, 2048)):
        lo = intops.int_range(bits)[0]
        a = np.full((2, k), lo)
        b = np.full((k, 3), lo)
        assert np.all(intops.exact_matmul(a, b) == k * lo * lo)


def test_linear_accumulator_saturates_and_counts():
    x = np.full((1, 4), 127)
    w = np.full((2, 4), 127)
    bias = np.array([2**31 - 1, 0])
    acc = intops.accumulate(x, w, bias)
    assert intops.count_saturated(acc, 32) == 1
    assert intops.linear(x, w, bias).tolist() == [[2**31 - 1, 4 * 127 * 127]]


def test_gelu_table_lookup_and_mean_pool():
    table = np.arange(256) - 100
    assert intops.gelu(np.array([-128, 0, 127]), table).tolist() == [-100, 28, 155]
    x = np.array([[[1, 2], [3, 4], [100, 100]]])
    assert intops.mean_pool(x, np.array([[1, 1, 0]])).tolist() == [[2, 3]]


@settings(max_examples=100, deadline=None)
@given(t=arrays(np.int64, (2, 13), elements=st.integers(-3000, 3000)))
def test_softmax_sqrt2_codes_within_one_half_step_of_exact(t):
    f = widths.SOFTMAX_FRAC_BITS
    q = intops.softmax_log2(t, sqrt2=True)
    for row, codes in zip(t, q):
        logp = (row - row.max()) / 2**f - np.log2(np.sum(np.exp2((row - row.max()) / 2**f)))
        exact = np.clip(np.round(-2 * logp), 0, 15)
        assert np.all(np.abs(codes - exact) <= 1)


def test_sqrt2_weights_are_powers_of_sqrt_half():
    k = intops.log2_acc_shift(4, sqrt2=True)
    w = intops.log2_weights(np.arange(16), 4, sqrt2=True)
    assert w[15] == 0
    ref = 2.0 ** (k - np.arange(15) / 2)
    assert np.all(np.abs(w[:15] - ref) / ref < 2e-3)  # 181/256 against 1/sqrt(2)


def test_layernorm_power_of_two_factors_shift_inputs_first():
    x = np.array([[3, -1, 2, 0]])
    sh = np.array([0, 2, 1, 3])
    g, b = np.full(4, 100), np.zeros(4)
    assert np.array_equal(intops.layernorm(x, g, b, 3, 16, in_shift=sh), intops.layernorm(x << sh, g, b, 3, 16))


def test_requantize_per_channel_zero_points():
    y = intops.requantize(np.array([[10, 10, 10]]), 1, 1, 8, np.array([0, -3, 5]))
    assert y.tolist() == [[5, 2, 10]]
