"""The accelerator's integer operations: the specification every other layer follows.

Each function is pure, takes and returns integer numpy arrays, and states its
bit widths, rounding and saturation in its docstring. The engine calls these
functions, the RTL implements them and the cocotb benches compare against them.

Conventions used throughout:

* ``>>`` is an arithmetic shift right, i.e. floor division by a power of two.
* "round half up" means ``(x + 2**(s-1)) >> s`` (for ``s == 0`` no constant is
  added): one adder and a wire shift in hardware.
* Saturation clamps to the two's complement range of the stated width.
* Arrays are computed in int64; every intermediate is proven to fit by the
  bounds in the docstrings, so int64 never wraps.
"""

from __future__ import annotations

import numpy as np

from sim.widths import (  # the widths these functions default to
    ACC_BITS,
    GELU_IN_BITS,
    LN_NORM_BITS,
    LN_NORM_FRAC_BITS,
    LN_RECIP_BITS,
    LN_VAR_BITS,
    RESIDUAL_BITS,
    SOFTMAX_EXP_BITS,
    SOFTMAX_FRAC_BITS,
    SOFTMAX_LOG_BITS,
)


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The closed interval of a ``bits``-wide two's complement (or unsigned) integer."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def saturate(x: np.ndarray, bits: int, signed: bool = True) -> np.ndarray:
    """Clamp ``x`` to ``bits`` wide (signed or unsigned); returns int64."""
    lo, hi = int_range(bits, signed)
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def count_saturated(x: np.ndarray, bits: int, signed: bool = True) -> int:
    """How many elements of ``x`` lie outside ``bits`` wide, i.e. what saturate() changes."""
    lo, hi = int_range(bits, signed)
    x = np.asarray(x)
    return int(np.count_nonzero((x < lo) | (x > hi)))


def _round_const(shift: np.ndarray | int) -> np.ndarray:
    shift = np.asarray(shift, dtype=np.int64)
    return np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)


def _absmax(a: np.ndarray) -> int:
    return max(int(a.max(initial=0)), -int(a.min(initial=0)))


def _float_matmul(a: np.ndarray, b: np.ndarray, dtype) -> np.ndarray:
    """``a @ b`` in float BLAS, back to int64; exact under the caller's bound.

    Stacked (batched) products go through torch's batched GEMM: numpy's loop
    over small stacked matrices is two orders of magnitude slower.
    """
    a, b = a.astype(dtype, order="C"), b.astype(dtype, order="C")
    if a.ndim > 2 or b.ndim > 2:
        import torch

        return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy().astype(np.int64)
    return np.matmul(a, b).astype(np.int64)


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer ``a @ b`` (``a`` [..., K], ``b`` [K, N] or batched), as int64.

    Uses float BLAS where that is provably exact: every partial sum is bounded
    by ``K * max|a| * max|b|``, and a float32 (float64) sum of integers is exact
    while that bound stays below 2**24 (2**53). K is split into blocks small
    enough for float32 when possible, the block sums added in int64; operands
    too wide even for float64 use an int64 matmul.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    k = a.shape[-1]
    prod = max(_absmax(a) * _absmax(b), 1)
    if b.ndim == 2 and a.ndim > 2:  # one 2-D GEMM, not a loop of small ones
        return exact_matmul(a.reshape(-1, k), b).reshape(a.shape[:-1] + (b.shape[1],))
    for dtype, limit in ((np.float32, 1 << 24), (np.float64, 1 << 53)):
        block = (limit - 1) // prod
        if block >= k:
            return _float_matmul(a, b, dtype)
        if block >= 64:
            out = None
            for k0 in range(0, k, block):
                part = _float_matmul(a[..., k0:k0 + block], b[..., k0:k0 + block, :], dtype)
                out = part if out is None else out + part
            return out
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def accumulate(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The MAC array before saturation: ``x @ w.T + bias`` with no bound, int64.

    ``x`` [..., K] activations, ``w`` [N, K] weights, ``bias`` [N] integers.
    """
    acc = exact_matmul(x, np.asarray(w).T)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)
    return acc


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, acc_bits: int = ACC_BITS) -> np.ndarray:
    """Linear layer on the MAC array: ``saturate(x @ w.T + bias, acc_bits)``.

    Products of a-bit by w-bit operands are summed exactly; the accumulator
    saturates at its rails (overflow is counted by the engine, never wraps).
    """
    return saturate(accumulate(x, w, bias), acc_bits)


def matmul(a: np.ndarray, b: np.ndarray, acc_bits: int = ACC_BITS) -> np.ndarray:
    """Activation x activation product ``a @ b`` (``a`` [..., M, K], ``b`` [..., K, N]), saturating accumulator."""
    return saturate(exact_matmul(a, b), acc_bits)


def requantize(
    x: np.ndarray,
    m: np.ndarray | int,
    shift: np.ndarray | int,
    out_bits: int,
    zero_point: np.ndarray | int = 0,
    signed: bool = True,
) -> np.ndarray:
    """Dyadic requantization: ``saturate(((x*m + 2**(shift-1)) >> shift) + zero_point, out_bits)``.

    Round half up. ``m``, ``shift`` and ``zero_point`` broadcast along the last axis (one pair per
    channel) or are scalars. With ``m == 1`` it is a pure shifter (power-of-two
    scales). ``|x| < 2**31`` and ``m < 2**16`` keep ``x*m`` inside 48 bits.
    """
    shift = np.asarray(shift, dtype=np.int64)
    y = np.multiply(x, np.asarray(m, dtype=np.int64), dtype=np.int64)
    y += _round_const(shift)
    y >>= shift
    y += np.asarray(zero_point, dtype=np.int64)
    lo, hi = int_range(out_bits, signed)
    return np.clip(y, lo, hi, out=y)


def add(
    a: np.ndarray,
    b: np.ndarray,
    ma: int,
    mb: int,
    shift: int,
    out_bits: int = RESIDUAL_BITS,
) -> np.ndarray:
    """Residual add with scale alignment: ``saturate((a*ma + b*mb + 2**(shift-1)) >> shift, out_bits)``.

    Round half up. ``ma``/``mb`` bring both operands onto the output grid;
    with ``ma == mb == 1`` and ``shift == 0`` it is a plain saturating add.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    y = (a * int(ma) + b * int(mb) + int(_round_const(shift))) >> int(shift)
    return saturate(y, out_bits)


def isqrt(v: np.ndarray, bits: int = LN_VAR_BITS) -> np.ndarray:
    """Exact ``floor(sqrt(v))`` for ``0 <= v < 2**bits``, bit by bit (one compare per result bit)."""
    v = np.asarray(v, dtype=np.int64)
    root = np.zeros_like(v)
    for bit in range((bits + 1) // 2 - 1, -1, -1):
        trial = root | (1 << bit)
        root = np.where(trial * trial <= v, trial, root)
    return root


def add_const(x: np.ndarray, const: np.ndarray, out_bits: int) -> np.ndarray:
    """Constant add (position embeddings): ``saturate(x + const, out_bits)``, ``const`` broadcast onto ``x``."""
    return saturate(np.asarray(x, dtype=np.int64) + np.asarray(const, dtype=np.int64), out_bits)


def layernorm(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    shift: int,
    out_bits: int,
    frac_bits: int = LN_NORM_FRAC_BITS,
    recip_bits: int = LN_RECIP_BITS,
    in_shift: np.ndarray | None = None,
) -> np.ndarray:
    """Integer LayerNorm over the last axis (N channels) of int16 ``x``.

    0. with ``in_shift`` (per channel, 0..3; power-of-two factors), ``x = x << in_shift`` first
    1. ``mean = floor((sum(x) + N//2) / N)``                   (round half up)
    2. ``d = x - mean``;  ``var = floor(sum(d*d) / N)``
    3. ``std = max(isqrt(var), 1)``                            (exact floor sqrt)
    4. ``r = floor(2**recip_bits / std)``                      (one divide per row)
    5. ``n = saturate((d*r + 2**(recip_bits-frac_bits-1)) >> (recip_bits-frac_bits), 16)``
       — the normalized value with ``frac_bits`` fractional bits (LN_NORM_BITS wide), round half up
    6. ``y = saturate((n*gamma + beta + 2**(shift-1)) >> shift, out_bits)``
       — per-channel affine; the output zero point is folded into ``beta``.

    A zero-variance row gives ``d == 0`` hence ``y = (beta + round) >> shift``.
    """
    x = np.asarray(x, dtype=np.int64)
    if in_shift is not None:
        x = x << np.asarray(in_shift, dtype=np.int64)
    n_ch = x.shape[-1]
    mean = (x.sum(axis=-1, keepdims=True) + n_ch // 2) // n_ch
    d = x - mean
    var = (d * d).sum(axis=-1, keepdims=True) // n_ch
    std = np.maximum(isqrt(var), 1)
    recip = (np.int64(1) << recip_bits) // std
    norm_shift = recip_bits - frac_bits
    n = saturate((d * recip + (1 << (norm_shift - 1))) >> norm_shift, LN_NORM_BITS)
    y = (n * np.asarray(gamma, dtype=np.int64) + np.asarray(beta, dtype=np.int64) + int(_round_const(shift))) >> int(shift)
    return saturate(y, out_bits)


def exp2_table(frac_bits: int = SOFTMAX_FRAC_BITS, exp_bits: int = SOFTMAX_EXP_BITS) -> np.ndarray:
    """Softmax exp ROM: entry f is ``round(2**exp_bits * 2**(-f / 2**frac_bits))``.

    Built with integer arithmetic only: the float constants are fixed by the
    definition, and the table is part of the hardware, not of a program.
    """
    f = np.arange(1 << frac_bits, dtype=np.float64)
    return np.floor(np.exp2(exp_bits - f / (1 << frac_bits)) + 0.5).astype(np.int64)


def log2_table(log_bits: int = SOFTMAX_LOG_BITS, frac_bits: int = SOFTMAX_FRAC_BITS) -> np.ndarray:
    """Softmax log2 ROM: entry i is ``round(2**frac_bits * log2(1 + i / 2**log_bits))``."""
    i = np.arange(1 << log_bits, dtype=np.float64)
    return np.floor((1 << frac_bits) * np.log2(1.0 + i / (1 << log_bits)) + 0.5).astype(np.int64)


_EXP2 = exp2_table()
_LOG2 = log2_table()


def log2_fixed(s: np.ndarray, frac_bits: int = SOFTMAX_FRAC_BITS, log_bits: int = SOFTMAX_LOG_BITS) -> np.ndarray:
    """``log2(s)`` with ``frac_bits`` fractional bits for ``s >= 1``: leading-one position plus a ROM on the next ``log_bits`` bits."""
    s = np.asarray(s, dtype=np.int64)
    p = np.zeros_like(s)
    for bit in range(62, -1, -1):  # priority encoder
        p = np.where((p == 0) & (s >> bit > 0), bit, p)
    mant = np.where(p >= log_bits, s >> np.maximum(p - log_bits, 0), s << np.maximum(log_bits - p, 0))
    idx = mant & ((1 << log_bits) - 1)
    table = _LOG2 if (frac_bits, log_bits) == (SOFTMAX_FRAC_BITS, SOFTMAX_LOG_BITS) else log2_table(log_bits, frac_bits)
    return (p << frac_bits) + table[idx]


def softmax_log2(
    t: np.ndarray,
    valid: np.ndarray | None = None,
    code_bits: int = 4,
    frac_bits: int = SOFTMAX_FRAC_BITS,
    exp_bits: int = SOFTMAX_EXP_BITS,
    sqrt2: bool = False,
) -> np.ndarray:
    """Softmax over the last axis, returned as log2 codes ``q ~ round(-log2(p))``.

    ``t`` holds scores already in log2 units with ``frac_bits`` fractional bits
    (the preceding requant folds the score scale and log2(e) into its multiplier).
    ``valid`` (broadcastable bool) marks positions that take part; masked ones get
    the zero code. Per row:

    1. ``mx = max(t over valid)``; ``d = mx - t >= 0``
    2. ``e = EXP[d mod 2**frac_bits] >> (d >> frac_bits)``      (exp ROM and a shifter; floor)
    3. ``S = sum(e over valid)``                                (``S >= 2**exp_bits``)
    4. ``L = log2_fixed(S)``                                    (priority encoder + log ROM)
    5. ``q = saturate((L - exp_bits*2**frac_bits + d + 2**(frac_bits-1)) >> frac_bits, [0, 2**code_bits - 1])``

    Code ``2**code_bits - 1`` means probability exactly 0 (underflow or masked);
    code ``c`` below it means probability ``2**-c``. With ``sqrt2`` the codes
    are half steps, ``q ~ round(-2*log2(p))`` and ``p = 2**(-c/2)``: step 5 becomes
    ``(2*(L - exp_bits*2**frac_bits + d) + 2**(frac_bits-1)) >> frac_bits``.
    """
    t = np.asarray(t, dtype=np.int64)
    zero_code = (1 << code_bits) - 1
    if valid is not None:
        valid = np.broadcast_to(np.asarray(valid, dtype=bool), t.shape)
        t = np.where(valid, t, np.int64(np.iinfo(np.int64).min // 4))  # masked keys never win the max
    d = t.max(axis=-1, keepdims=True) - t
    table = _EXP2 if (frac_bits, exp_bits) == (SOFTMAX_FRAC_BITS, SOFTMAX_EXP_BITS) else exp2_table(frac_bits, exp_bits)
    if valid is not None:
        d = np.where(valid, d, 0)
    e = table[d & ((1 << frac_bits) - 1)]
    e >>= np.minimum(d >> frac_bits, 63)
    if valid is not None:
        e[~valid] = 0
    s = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    q = log2_fixed(s, frac_bits) - (exp_bits << frac_bits) + d  # [.., 1] + [.., T]: one pass
    if sqrt2:
        q *= 2
    q += 1 << (frac_bits - 1)
    q >>= frac_bits
    np.clip(q, 0, zero_code, out=q)
    if valid is not None:
        q[~valid] = zero_code
    return q


SQRT_HALF_Q8 = 181  #: round(2**8 / sqrt(2)): odd log-sqrt(2) codes multiply by 181 and shift right by 8


def log2_acc_shift(code_bits: int = 4, sqrt2: bool = False) -> int:
    """The accumulator of ``matmul_log2`` holds ``sum p*V`` times ``2**log2_acc_shift``."""
    top = (1 << code_bits) - 2
    return top // 2 + 8 if sqrt2 else top


def log2_weights(codes: np.ndarray, code_bits: int = 4, sqrt2: bool = False) -> np.ndarray:
    """The integer attention weights codes stand for, ``p * 2**log2_acc_shift``; 0 for the zero code.

    Base 2: ``2**(K - c)``. Base sqrt(2): ``2**(K - c/2)`` for even c and
    ``(2**(K - (c-1)/2) * 181) >> 8`` for odd c (a constant shift-add), K = log2_acc_shift.
    """
    codes = np.asarray(codes, dtype=np.int64)
    top = (1 << code_bits) - 2
    k = log2_acc_shift(code_bits, sqrt2)
    one = np.int64(1)
    if sqrt2:
        even = np.left_shift(one, np.maximum(k - codes // 2, 0))
        odd = (np.left_shift(one, np.maximum(k - (codes - 1) // 2, 0)) * SQRT_HALF_Q8) >> 8
        w = np.where(codes % 2 == 0, even, odd)
    else:
        w = np.left_shift(one, np.maximum(k - codes, 0))
    return np.where(codes <= top, w, 0)


def matmul_log2(codes: np.ndarray, v: np.ndarray, code_bits: int = 4, acc_bits: int = ACC_BITS,
                sqrt2: bool = False) -> np.ndarray:
    """Attention x V with log2 codes: ``out[i] = sum_j V[j] * log2_weights(q[i, j])``.

    No multiplier for base 2 (``V << (2**code_bits - 2 - q)``); base sqrt(2)
    adds one constant shift-add for odd codes. The zero code contributes
    nothing. The result has scale ``s_V * 2**-log2_acc_shift``; the
    accumulator saturates at ``acc_bits``.
    """
    return saturate(exact_matmul(log2_weights(codes, code_bits, sqrt2), v), acc_bits)


def gelu(x: np.ndarray, table: np.ndarray, in_bits: int = GELU_IN_BITS) -> np.ndarray:
    """GELU unit: a ROM of ``2**in_bits`` entries indexed by the signed input, ``table[x + 2**(in_bits-1)]``.

    The table maps the input grid to the output grid and is computed at
    quantization time; the unit itself is exact.
    """
    x = np.asarray(x, dtype=np.int64)
    return np.asarray(table, dtype=np.int64)[x + (1 << (in_bits - 1))]


def embedding(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Row lookup ``table[ids]`` (token, position or segment embeddings)."""
    return np.asarray(table, dtype=np.int64)[np.asarray(ids, dtype=np.int64)]


def mean_pool(x: np.ndarray, valid: np.ndarray, out_bits: int = RESIDUAL_BITS) -> np.ndarray:
    """Mean over the valid rows of ``x`` [..., T, D]: ``floor((sum + n//2) / n)``, round half up; ``n >= 1``."""
    x = np.asarray(x, dtype=np.int64)
    valid = np.asarray(valid, dtype=bool)[..., None]
    n = np.maximum(valid.sum(axis=-2), 1)
    total = np.where(valid, x, 0).sum(axis=-2)
    return saturate((total + n // 2) // n, out_bits)
