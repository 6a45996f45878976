"""The accelerator's integer operations: the specification every other layer follows.

Each function is pure, takes and returns integer numpy arrays, and states its
bit widths, rounding and saturation in its docstring. The engine calls these
functions, the RTL implements them and the cocotb benches compare against them.

Conventions used throughout:

* ``>>`` is an arithmetic shift right, i.e. floor division by a power of two.
* "round half up" means ``(x + 2**(s-1)) >> s`` (for ``s == 0`` no constant is
  added): one adder and a wire shift in hardware.
* Saturation clamps to the two's complement range of the stated width.
* A result holds exactly the integers its definition gives, in the narrowest of
  int8 / int16 / int32 / int64 that its stated range (or a bound proven from the
  operands) fits. Arithmetic on a result that could leave that range must widen
  it first.
* Every intermediate is proven to fit the integer type it is computed in by a
  bound stated where it is used: int32 (on torch integer tensors, both cores)
  where operand bounds allow, int64 otherwise, so nothing ever wraps. Float
  arithmetic appears only inside ``exact_matmul``, and only under a bound that
  makes every partial sum an exactly representable integer.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from sim.widths import (  # the widths these functions default to
    ACC_BITS,
    GELU_IN_BITS,
    LN_NORM_BITS,
    LN_NORM_FRAC_BITS,
    LN_RECIP_BITS,
    LN_VAR_BITS,
    MAX_TULQ_GRID_BITS,
    RESIDUAL_BITS,
    SOFTMAX_EXP_BITS,
    SOFTMAX_FRAC_BITS,
    SOFTMAX_IN_BITS,
    SOFTMAX_LOG_BITS,
)

_I32 = 1 << 31  #: int32 holds every integer of magnitude below this
_F32_EXACT = 1 << 24  #: float32 holds every integer of magnitude up to this
_F64_EXACT = 1 << 53  #: float64 likewise
_INT8_MM_K = 1 << 17  #: an int8 x int8 product is at most 2**14 in magnitude; fewer than 2**17 of them sum inside int32
_INT8_MM_MIN_K = 4  #: torch's CPU int8 GEMM returns garbage for K == 1 (torch 2.14); short products go to float


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The closed interval of a ``bits``-wide two's complement (or unsigned) integer."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _dtype_holding(lo: int, hi: int) -> np.dtype:
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def out_dtype(bits: int, signed: bool = True) -> np.dtype:
    """The dtype results of a ``bits``-wide range come in: the narrowest of int8/16/32/64 holding it."""
    return _dtype_holding(*int_range(bits, signed))


# ----------------------------------------------------------------------------- helpers
def _torch():
    import torch  # imported on first use: the cocotb benches import this module without needing torch

    return torch


def _ints(a) -> np.ndarray:
    """``a`` as a signed integer array of any width (bool and unsigned widened; floats truncated as before)."""
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.signedinteger):
        return a
    if a.dtype == np.bool_ or a.dtype == np.uint8:
        return a.astype(np.int16)
    return a.astype(np.int64)


def _t(a: np.ndarray):
    """A torch view of integer array ``a`` (copied when torch cannot share it: read-only or reversed strides)."""
    if not a.flags.writeable or any(s < 0 for s in a.strides) or not a.dtype.isnative:
        a = np.array(a)
    return _torch().from_numpy(a)


def _np_to_torch(dtype: np.dtype):
    torch = _torch()
    return {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[np.dtype(dtype).itemsize]


def _np(t, dtype: np.dtype) -> np.ndarray:
    """Torch tensor -> numpy array of signed ``dtype`` (the caller has proven the values fit it), a new array."""
    return t.to(_np_to_torch(dtype), copy=True).numpy()


_SCRATCH = threading.local()  # per thread: buffers for intermediates that never leave a function


def _scratch(slot: str, shape: tuple, dtype):
    """A tensor of ``shape``/``dtype`` over this thread's reused buffer ``slot`` (no fresh pages per call).

    Only for values computed and consumed inside one function; results are copied out with ``_np``.
    """
    n = math.prod(shape)
    pool = _SCRATCH.__dict__.setdefault("pool", {})
    buf = pool.get((slot, dtype))
    if buf is None or buf.numel() < n:
        buf = pool[(slot, dtype)] = _torch().empty(max(n, 1), dtype=dtype)
    return buf[:n].view(shape)


def _i32(v) -> "object":
    """A small int64 array or scalar as an int32 torch tensor with at least one dimension.

    (A dimensioned int32 operand makes torch compute in int32 whatever the width of the other operand.)
    """
    return _torch().from_numpy(np.atleast_1d(np.asarray(v, dtype=np.int64)).astype(np.int32))


def _dtype_bounds(a: np.ndarray) -> tuple[int, int]:
    info = np.iinfo(a.dtype)
    return int(info.min), int(info.max)


def _value_bounds(a: np.ndarray) -> tuple[int, int]:
    """The smallest and largest value of ``a`` (0, 0 when empty)."""
    if a.size == 0:
        return 0, 0
    if a.size < 4096:
        return int(a.min()), int(a.max())
    lo, hi = _torch().aminmax(_t(a))
    return int(lo), int(hi)


def _absmax(a: np.ndarray) -> int:
    lo, hi = _value_bounds(a)
    return max(hi, -lo)


def _cheap_absmax(a: np.ndarray) -> int:
    """A bound on ``|a|`` from its dtype when that is narrow (no pass over the data), else its true maximum."""
    if a.dtype.itemsize <= 2:
        lo, hi = _dtype_bounds(a)
        return max(hi, -lo)
    return _absmax(a)


def _round_const(shift: np.ndarray | int) -> np.ndarray:
    shift = np.asarray(shift, dtype=np.int64)
    return np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)


class HeldSetting:
    """A process-wide torch setting held at ``value`` while any thread is inside ``with setting:``.

    Counted across threads: the setting before the first entry is restored when the last one leaves.
    """

    def __init__(self, get: str, set_: str, value):
        self.get, self.set, self.value = get, set_, value
        self._lock = threading.Lock()
        self._saved: list = []  # [count inside, the setting before the first]

    def __enter__(self):
        torch = _torch()
        with self._lock:
            if not self._saved:
                self._saved[:] = [0, getattr(torch, self.get)()]
                getattr(torch, self.set)(self.value)
            self._saved[0] += 1

    def __exit__(self, *exc):
        with self._lock:
            self._saved[0] -= 1
            if self._saved[0] == 0:
                getattr(_torch(), self.set)(self._saved[1])
                self._saved.clear()


#: float32 GEMMs at full IEEE precision (no TF32 / bf16 shortcuts) while any is inside
_ieee_float32 = HeldSetting("get_float32_matmul_precision", "set_float32_matmul_precision", "highest")


def saturate(x: np.ndarray, bits: int, signed: bool = True) -> np.ndarray:
    """Clamp ``x`` to ``bits`` wide (signed or unsigned), in ``out_dtype(bits, signed)``."""
    lo, hi = int_range(bits, signed)
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.signedinteger) else np.asarray(x, dtype=np.int64)
    dt = out_dtype(bits, signed)
    dlo, dhi = _dtype_bounds(x)
    if lo <= dlo and dhi <= hi:  # nothing of this dtype lies outside the rails
        return x.astype(dt, copy=False)
    return np.clip(x, max(lo, dlo), min(hi, dhi)).astype(dt, copy=False)


def count_saturated(x: np.ndarray, bits: int, signed: bool = True) -> int:
    """How many elements of ``x`` lie outside ``bits`` wide, i.e. what saturate() changes."""
    lo, hi = int_range(bits, signed)
    x = np.asarray(x)
    return int(np.count_nonzero((x < lo) | (x > hi)))


# ----------------------------------------------------------------------------- products
_INT_MM: list[bool] = []  # whether this torch has a working CPU int8 GEMM that is worth using (probed once)


def _has_int_mm() -> bool:
    """Whether torch's int8 GEMM is there, gives the int64 products on a spread of shapes and the rails, and is
    faster than float32 BLAS here."""
    if not _INT_MM:
        torch = _torch()
        ok = hasattr(torch, "_int_mm")
        gen = torch.Generator().manual_seed(0)
        for m, k, n in ((1, 4, 1), (3, 7, 5), (17, 64, 33), (64, 384, 48), (5, 1536, 9)):
            if not ok:
                break
            a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
            b = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
            a[0], b[0] = -128, -128
            try:
                ok = all(torch.equal(torch._int_mm(a, bt).long(), a.long() @ b.t().long()) for bt in (b.t(), b.t().contiguous()))
            except RuntimeError:
                ok = False
        _INT_MM.append(ok and _int_mm_pays(torch))
    return _INT_MM[0]


def _int_mm_pays(torch) -> bool:
    """Whether the int8 GEMM beats float32 BLAS on this CPU (both are exact where they are used; only the time
    differs). Without int8 dot-product instructions torch's int8 GEMM falls back to a slow path: on an AVX2-only
    EPYC a [1920, 384] x [384, 1536] product took 1.57 s on the int8 GEMM and 0.03 s in float32."""
    import time

    gen = torch.Generator().manual_seed(1)  # the global generator stays untouched
    a = torch.randint(-128, 128, (512, 384), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (384, 384), dtype=torch.int8, generator=gen)
    af, bf = a.float(), b.float()

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return best(lambda: torch._int_mm(a, b)) < best(lambda: torch.matmul(af, bf))


def _int8_matmul(a: np.ndarray, b: np.ndarray, alo: int, ahi: int, bmax: int) -> tuple[np.ndarray, int] | None:
    """2-D ``a @ b`` on the int8 GEMM (int32 accumulation), or None when the operands do not allow it.

    ``b`` must lie in int8; ``a`` in any 256-wide range ``[o-128, o+127]``, computed as
    ``(a - o) @ b + o * colsum(b)``. Exact: ``|(a - o)_ik * b_kj| <= 2**14`` and K < 2**17
    keep the GEMM's int32 sums exact; the correction and the result are each checked to fit int32.
    """
    torch = _torch()
    k = a.shape[1]
    if not _INT8_MM_MIN_K <= k < _INT8_MM_K or ahi - alo > 255 or not _has_int_mm():
        return None
    o = 0 if (alo >= -128 and ahi <= 127) else alo + 128
    bound = k * max(ahi, -alo) * bmax  # of the true result
    if bound >= _I32:
        return None
    bt = _t(b) if b.dtype == np.int8 else torch.from_numpy(b.astype(np.int8))
    if o == 0:
        at = _t(a) if a.dtype == np.int8 else torch.from_numpy(a.astype(np.int8))
        return torch._int_mm(at, bt).numpy(), bound
    colsum = o * b.sum(axis=0, dtype=np.int64)
    if np.abs(colsum).max(initial=0) >= _I32:
        return None
    at = (_t(a).to(torch.int32) - o).to(torch.int8)
    acc = torch._int_mm(at, bt)
    acc += torch.from_numpy(colsum.astype(np.int32))  # both terms and the sum lie in int32
    return acc.numpy(), bound


_BATCHED_INT8_WORK = 1 << 18  #: M*N*K per matrix above which a loop of int8 GEMMs beats one batched float GEMM


def _batched_int8_matmul(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Stacked ``a @ b`` of int8 operands with the same batch shape, one int8 GEMM per matrix (exact as above)."""
    torch = _torch()
    *batch, m, k = a.shape
    n = b.shape[-1]
    if (a.dtype != np.int8 or b.dtype != np.int8 or list(b.shape[:-2]) != batch or not _INT8_MM_MIN_K <= k < _INT8_MM_K
            or m * n * k < _BATCHED_INT8_WORK or not _has_int_mm()):
        return None
    a3 = _t(a).reshape(-1, m, k).contiguous()
    b3 = _t(b).reshape(-1, k, n)
    out = torch.empty((a3.shape[0], m, n), dtype=torch.int32)
    for i in range(a3.shape[0]):
        torch._int_mm(a3[i], b3[i], out=out[i])
    return out.numpy().reshape(tuple(batch) + (m, n)), k * 128 * 128


def _float_matmul(a: np.ndarray, b: np.ndarray, dtype) -> np.ndarray:
    """``a @ b`` in float BLAS (torch, IEEE precision pinned), back to integers; exact under the caller's bound."""
    torch = _torch()
    af = _scratch("mm_a", a.shape, dtype).copy_(_t(a))
    bf = _scratch("mm_b", b.shape, dtype).copy_(_t(b))
    with _ieee_float32:
        out = torch.matmul(af, bf)
    return out


def _row_abs_sum_max(a: np.ndarray) -> int:
    """``max_i sum_k |a[..., i, k]|``, exactly (int32 sums while ``K * max|a| < 2**31``, else int64)."""
    torch = _torch()
    lo, hi = _value_bounds(a)
    t = _t(a)
    if lo < 0:
        t = t.to(torch.int64 if a.dtype.itemsize == 8 else torch.int32).abs()
    acc = torch.int32 if a.shape[-1] * max(hi, -lo) < _I32 else torch.int64
    return int(t.sum(-1, dtype=acc).max())


def _matmul_bound(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Exact ``a @ b`` and a bound on the magnitude of every element of it."""
    torch = _torch()
    k = a.shape[-1]
    if b.ndim == 2 and a.ndim > 2:  # one 2-D GEMM, not a loop of small ones
        out, bound = _matmul_bound(a.reshape(-1, k), b)
        return out.reshape(a.shape[:-1] + (b.shape[1],)), bound
    if a.size == 0 or b.size == 0:
        return np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(np.int32), 0
    if a.ndim == 2 and b.ndim == 2:
        blo, bhi = _dtype_bounds(b) if b.dtype == np.int8 else _value_bounds(b)
        if blo >= -128 and bhi <= 127:
            alo, ahi = _dtype_bounds(a) if a.dtype == np.int8 else _value_bounds(a)
            got = _int8_matmul(a, b, alo, ahi, max(bhi, -blo))
            if got is not None:
                return got
    elif a.ndim > 2 and b.ndim > 2:
        got = _batched_int8_matmul(a, b)
        if got is not None:
            return got
    amax, bmax = _cheap_absmax(a), _cheap_absmax(b)
    bound = k * amax * bmax
    if bound >= _F32_EXACT:  # tighter: the true maxima, then row / column sums of magnitudes
        amax, bmax = _absmax(a), _absmax(b)
        bound = k * amax * bmax
    if bound >= _F32_EXACT and a.ndim >= 2 and b.ndim >= 2:
        bound = min(bound, _row_abs_sum_max(a) * bmax)
        if bound >= _F32_EXACT:
            bound = min(bound, _row_abs_sum_max(np.swapaxes(b, -1, -2)) * amax)
    # Every partial sum of a row-by-column product is bounded by `bound`, so float32 (float64)
    # sums it exactly in any order while bound < 2**24 (2**53).
    if bound < _F32_EXACT:
        return _float_matmul(a, b, torch.float32).to(torch.int32).numpy(), bound
    out_dt = np.int32 if bound < _I32 else np.int64
    prod = max(amax * bmax, 1)
    for dtype, limit in ((torch.float32, _F32_EXACT), (torch.float64, _F64_EXACT)):
        block = (limit - 1) // prod
        if block >= k:
            return _float_matmul(a, b, dtype).to(torch.int64).numpy().astype(out_dt), bound
        if block >= 64:  # K in blocks small enough to be exact; block sums added in int64
            out = None
            for k0 in range(0, k, block):
                part = _float_matmul(a[..., k0:k0 + block], b[..., k0:k0 + block, :], dtype).to(torch.int64)
                out = part if out is None else out + part
            return out.numpy().astype(out_dt), bound
    return np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(out_dt), bound


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer ``a @ b`` (``a`` [..., K], ``b`` [K, N] or batched); int32 when it provably fits, else int64.

    2-D products of int8-range operands (``a`` may be any 256-wide range, e.g. unsigned
    8-bit) run on torch's int8 GEMM with int32 accumulation where that GEMM is faster than
    float32 BLAS: exact while K < 2**17 (and so do large stacked products of int8 arrays,
    one GEMM per matrix).
    Otherwise float BLAS where that is provably exact: every partial sum is bounded by
    ``K * max|a| * max|b|`` (or, tighter, by ``max|b| * max_i sum_k |a_ik|`` and its
    transpose), and a float32 (float64) sum of integers is exact while that bound stays
    below 2**24 (2**53); float32 precision is pinned to IEEE for the call. K is split into
    blocks small enough for float32 when possible, the block sums added in int64; operands
    too wide even for float64 use an int64 matmul.
    """
    return _matmul_bound(_ints(a), _ints(b))[0]


def weight_digit_planes(w: np.ndarray, port_bits: int) -> list[np.ndarray]:
    """Weights wider than a ``port_bits``-wide signed weight port as the fewest signed digits, each in the
    port's range: ``w = sum_e planes[e] * 2**(e * port_bits)``. Every digit but the last is the balanced
    remainder ``((w + 2**(port_bits-1)) mod 2**port_bits) - 2**(port_bits-1)``, so no digit needs an
    unsigned mode (whose correction, unlike an activation digit's, would depend on the streamed data);
    two digits hold ``[-2**(2b-1) - 2**(b-1), 2**(2b-1) - 2**(b-1) - 1]`` (b = 4: -136..119), so int8
    weights past that take a third."""
    half = 1 << (port_bits - 1)
    rest = np.asarray(w, dtype=np.int64)
    planes = []
    while rest.size and (rest.min() < -half or rest.max() >= half):
        low = ((rest + half) & ((1 << port_bits) - 1)) - half
        planes.append(low)
        rest = (rest - low) >> port_bits
    return planes + [rest]


def weight_digits(w: np.ndarray, port_bits: int) -> int:
    """How many planes :func:`weight_digit_planes` gives ``w``: the count depends on its extremes alone."""
    w = np.asarray(w)
    return len(weight_digit_planes(np.array([w.min(), w.max()]), port_bits)) if w.size else 1


def signed_digits(bits: int, port_bits: int, signed: bool = True) -> int:
    """Balanced signed digits (:func:`weight_digit_planes`) a ``bits``-wide operand takes through a
    ``port_bits``-wide signed port: 1 up to the port's width, 2 for int5-int7 and 3 for int8 on a 4-bit one
    (an unsigned operand: by its range ``[0, 2**bits)``, uint11 taking 3)."""
    return weight_digits(np.array(int_range(bits, signed)), port_bits)


def balance_offset(digits: int, port_bits: int) -> int:
    """``C = sum_{e < digits} 2**(b-1) * 2**(e b)`` (b = ``port_bits``): added to ``x``, it makes each of the
    ``digits`` balanced signed digits of ``x`` a plain ``b``-bit field offset by ``2**(b-1)``."""
    return sum((1 << (port_bits - 1)) << (e * port_bits) for e in range(digits))


def balanced_digit(x: np.ndarray, d: int, digits: int, port_bits: int) -> np.ndarray:
    """Digit ``d`` of the ``digits`` balanced signed digits of ``x``: bits ``[d b, (d+1) b)`` of
    ``x + balance_offset(digits, b)`` minus ``2**(b-1)`` (b = ``port_bits``), what a port takes with the
    digit's top bit inverted; the same digits as :func:`weight_digit_planes` for ``x`` in range."""
    field = ((np.asarray(x, dtype=np.int64) + balance_offset(digits, port_bits)) >> (d * port_bits))
    return (field & ((1 << port_bits) - 1)) - (1 << (port_bits - 1))


def accumulate(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The MAC array before saturation: ``x @ w.T + bias`` with no bound; int32 when it provably fits, else int64.

    ``x`` [..., K] activations, ``w`` [N, K] weights, ``bias`` [N] integers.
    """
    x, w = _ints(x), _ints(w)
    acc = exact_matmul(x, w.T)
    if bias is None:
        return acc
    bias = _ints(bias)
    bound = x.shape[-1] * (_dtype_bounds(x)[1] + 1 if x.dtype == np.int8 else _absmax(x)) * _cheap_absmax(w)
    if acc.dtype == np.int32 and bound + _absmax(bias) < _I32:  # |acc + bias| <= K*max|x|*max|w| + max|bias|
        t = _torch().from_numpy(acc)
        t += _t(bias).to(_torch().int32)
        return acc
    return acc.astype(np.int64) + bias.astype(np.int64)


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, acc_bits: int = ACC_BITS) -> np.ndarray:
    """Linear layer on the MAC array: ``saturate(x @ w.T + bias, acc_bits)``.

    Products of a-bit by w-bit operands are summed exactly; the accumulator
    saturates at its rails (overflow is counted by the engine, never wraps).
    """
    return saturate(accumulate(x, w, bias), acc_bits)


def conv_out_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    """Output length of a convolution along one axis: ``(size + pad_lo + pad_hi - kernel) // stride + 1``."""
    return (size + pad_lo + pad_hi - kernel) // stride + 1


def im2col(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int],
           pad_value: int = 0) -> np.ndarray:
    """The patches a convolution reads: ``x`` [..., H, W, C] (channels last) -> [..., Ho, Wo, kh, kw, C].

    ``padding`` is (top, bottom, left, right); padded positions hold ``pad_value`` (the input's zero point, so
    that a padded tap is a real zero). Patch ``(i, j)`` starts at row ``i * sh - top``, column ``j * sw - left``.
    """
    x = np.asarray(x)
    (kh, kw), (sh, sw), (top, bottom, left, right) = kernel, stride, padding
    lead = x.ndim - 3
    pads = [(0, 0)] * lead + [(top, bottom), (left, right), (0, 0)]
    xp = np.pad(x, pads, constant_values=pad_value) if any(padding) else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(lead, lead + 1))  # [..., H', W', C, kh, kw]
    win = win[..., ::sh, ::sw, :, :, :]
    return np.moveaxis(win, -3, -1)  # [..., Ho, Wo, kh, kw, C]


def conv2d_accumulate(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: tuple[int, int],
                      padding: tuple[int, int, int, int], groups: int = 1, pad_value: int = 0) -> np.ndarray:
    """A convolution on the MAC array before saturation, as the products of its patches (im2col).

    ``x`` [..., H, W, C] channels last; ``w`` [O, kh, kw, C/groups] (the patch order: rows, columns, then
    the group's channels); ``bias`` [O]. Output channel ``o`` belongs to group ``o // (O/groups)`` and reads
    that group's ``C/groups`` input channels: ``acc[..., i, j, o] = bias[o] + sum w[o, u, v, c] *
    xpad[..., i*sh + u, j*sw + v, g*C/groups + c]``. Exact, int32 where it provably fits, else int64; a
    depthwise convolution (one input channel a group) sums its ``kh*kw`` taps with the same bound.
    """
    o_ch, kh, kw, cg = w.shape
    patches = im2col(x, (kh, kw), stride, padding, pad_value)  # [..., Ho, Wo, kh, kw, C]
    lead = patches.shape[:-3]
    if groups == 1:
        return accumulate(patches.reshape(lead + (kh * kw * cg,)), w.reshape(o_ch, -1), bias)
    per = o_ch // groups
    cols = patches.reshape(lead + (kh * kw, groups, cg))
    if cg == 1:  # depthwise: each group's taps against its own filters
        taps = _ints(cols[..., 0])  # [..., kh*kw, groups]
        wd = _ints(w.reshape(groups, per, kh * kw))  # [groups, per, taps]
        bound = kh * kw * _absmax(taps) * _absmax(wd) + _absmax(bias)
        dtype = np.int32 if bound < _I32 else np.int64
        acc = np.einsum("...tg,gpt->...gp", taps.astype(dtype), wd.astype(dtype), dtype=dtype)
        return acc.reshape(lead + (o_ch,)) + _ints(bias).astype(dtype)
    outs = [accumulate(cols[..., g, :].reshape(lead + (kh * kw * cg,)),
                       w[g * per:(g + 1) * per].reshape(per, -1), bias[g * per:(g + 1) * per]).astype(np.int64)
            for g in range(groups)]
    return np.concatenate(outs, axis=-1)


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: tuple[int, int],
           padding: tuple[int, int, int, int], groups: int = 1, pad_value: int = 0,
           acc_bits: int = ACC_BITS) -> np.ndarray:
    """Convolution on the MAC array: ``saturate(conv2d_accumulate(...), acc_bits)``."""
    return saturate(conv2d_accumulate(x, w, bias, stride, padding, groups, pad_value), acc_bits)


def max_pool2d(x: np.ndarray, kernel: int, stride: int, padding: tuple[int, int, int, int]) -> np.ndarray:
    """Max over ``kernel`` x ``kernel`` windows of ``x`` [..., H, W, C] (channels last), ``stride`` apart;
    padded taps never win (every window holds at least one real tap while padding < kernel)."""
    x = np.asarray(x)
    floor = int(np.iinfo(np.int64).min) if x.size == 0 else int(x.min())
    patches = im2col(x, (kernel, kernel), (stride, stride), padding, floor)
    return patches.max(axis=(-3, -2)).astype(x.dtype)


def matmul(a: np.ndarray, b: np.ndarray, acc_bits: int = ACC_BITS) -> np.ndarray:
    """Activation x activation product ``a @ b`` (``a`` [..., M, K], ``b`` [..., K, N]), saturating accumulator."""
    return saturate(exact_matmul(a, b), acc_bits)


# ----------------------------------------------------------------------------- requantization
def _requantize_int64(x, m, shift, zp, lo, hi) -> np.ndarray:
    y = np.multiply(x, m, dtype=np.int64)
    y += _round_const(shift)
    y >>= shift
    y += zp
    return np.clip(y, lo, hi, out=y)


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

    Computed in int32 when ``X = max|x|`` allows, with ``c = 2**(s-1) + zp*2**s`` (so
    ``y = (x*m + c) >> s`` exactly): in one step while ``X*max|m| + max|c| < 2**31``; else, for
    ``0 < m <= 2**s``, with x clamped first to the inputs that reach the rails (see
    ``_requantize_clamped_first``); else with ``m = mh*2**k + ml`` (``k = min(8, min s)``) as
    ``(x*mh + ((x*ml + c) >> k)) >> (s-k)``, exact by nested floors, while both sums are
    bounded below 2**31; otherwise in int64.
    """
    x = _ints(x)
    m = np.asarray(m, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    zp = np.asarray(zero_point, dtype=np.int64)
    lo, hi = int_range(out_bits, signed)
    dt = out_dtype(out_bits, signed)
    if x.ndim == 0 or x.size == 0 or max(m.ndim, shift.ndim, zp.ndim) > 1 or shift.size == 0 or m.size == 0 \
            or shift.min() < 0 or shift.max() > 62:
        return _requantize_int64(x, m, shift, zp, lo, hi).astype(dt)
    smax = int(shift.max())
    zmax = int(np.abs(zp).max())
    if zmax >= 1 << 30 or (zmax << smax) >= 1 << 61:
        return _requantize_int64(x, m, shift, zp, lo, hi).astype(dt)
    c = _round_const(shift) + (zp << shift)  # |c| < 2**62
    xmax, mmax, cmax = _absmax(x), int(np.abs(m).max()), int(np.abs(c).max())
    torch = _torch()
    n_ch = x.shape[-1]
    try:  # per-channel vectors over the last axis (torch is slow with one-element operands)
        m, shift, c = (np.broadcast_to(v, (n_ch,)) for v in (m, shift, c))
    except ValueError:
        return _requantize_int64(x, m, shift, zp, lo, hi).astype(dt)
    xt = _t(x) if x.dtype.itemsize <= 4 else _t(x).to(torch.int32)  # used only where |x| < 2**31
    one_step = xmax * mmax + cmax < _I32
    if not one_step and x.dtype.itemsize <= 4:
        y = _requantize_clamped_first(xt, m, shift, c, lo, hi)
        if y is not None:
            return _np(y, dt)
    k = 0 if one_step else min(8, int(shift.min()))
    mh, ml = m >> k, m & ((1 << k) - 1)  # m = mh*2**k + ml, 0 <= ml < 2**k
    b_bound = xmax * ((1 << k) - 1) + cmax
    if not one_step and (b_bound >= _I32 or xmax * int(np.abs(mh).max()) + (b_bound >> k) + 1 >= _I32):
        return _requantize_int64(x, m, shift, zp, lo, hi).astype(dt)
    # the result before saturation lies in [(c - X*|m|) >> s, (c + X*|m|) >> s] per channel
    sat = bool(np.any((c - xmax * np.abs(m)) >> shift < lo) or np.any((c + xmax * np.abs(m)) >> shift > hi))
    y = _scratch("rq", x.shape, torch.int32)
    if x.dtype == np.int32:
        torch.addcmul(_i32(c), xt, _i32(m if one_step else ml), out=y)
    else:
        torch.addcmul(_i32(c), y.copy_(xt), _i32(m if one_step else ml), out=y)
    if not one_step:  # y = B = x*ml + c; then x*mh + (B >> k), exact by nested floors
        y >>= k
        y.addcmul_(xt, _i32(mh))
    y >>= _i32(np.minimum(shift - k, 31))  # y fits int32, so >> 31 is the same floor as any larger shift
    if sat:
        y.clamp_(max(lo, -_I32), min(hi, _I32 - 1))
    return _np(y, dt)


def pack_channels(y: np.ndarray, chan_bits: np.ndarray, chan_shift: np.ndarray, signed: bool) -> np.ndarray:
    """Group-wise packing of requantized values: channel c (the last axis) saturates to a
    ``chan_bits[c]``-wide integer (signed or not; width 0 keeps only 0) and shifts left by ``chan_shift[c]``.

    The result stays on the input's grid (the low ``chan_shift[c]`` bits are zero), so a consumer reads it
    as it is; what memory holds of channel c is the ``chan_bits[c]`` bits between. No rounding: the
    requantizer before it rounds onto the channel's grid, 2**chan_shift[c] steps of the tensor's.
    """
    y = _ints(y)
    bits = np.asarray(chan_bits, dtype=np.int64)
    if signed:
        hi = np.where(bits > 0, (1 << np.maximum(bits - 1, 0)) - 1, 0)
        lo = np.where(bits > 0, -(1 << np.maximum(bits - 1, 0)), 0)
    else:
        hi, lo = (1 << bits) - 1, np.zeros_like(bits)
    out = np.clip(y.astype(np.int64), lo, hi) << np.asarray(chan_shift, dtype=np.int64)
    return out.astype(y.dtype)


def _requantize_clamped_first(xt, m, shift, c, lo: int, hi: int):
    """``clamp((x*m + c) >> s, lo, hi)`` as ``(clamp(x, xlo, xhi)*m + c) >> s`` in int32, or None where that does not hold.

    With ``0 < m <= 2**s`` the unsaturated result is non-decreasing in x and steps by at most
    one, so at ``xlo = ceil((lo*2**s - c) / m)`` it is exactly lo and at
    ``xhi = floor(((hi+1)*2**s - c - 1) / m)`` exactly hi: clamping x first is clamping the
    result. Needs ``max(|xlo|, |xhi|)*m + |c| < 2**31`` (and s <= 30 for the bounds in int64).
    """
    torch = _torch()
    if m.min() <= 0 or shift.max() > 30 or np.any(m > (1 << shift)):
        return None
    xlo = np.maximum(-((c - lo * (1 << shift)) // m), -_I32)  # ceil((lo*2**s - c) / m)
    xhi = np.minimum(((hi + 1) * (1 << shift) - c - 1) // m, _I32 - 1)
    if int((np.maximum(np.abs(xlo), np.abs(xhi)) * m + np.abs(c)).max()) >= _I32 or np.any(xlo > xhi):
        return None
    y = torch.clamp(xt, _i32(xlo), _i32(xhi), out=_scratch("rq", tuple(xt.shape), torch.int32))
    torch.addcmul(_i32(c), y, _i32(m), out=y)
    y >>= _i32(shift)
    return y


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
    In int32 while ``max|a|*|ma| + max|b|*|mb| + 2**(shift-1) < 2**31``, else in int64.
    """
    a, b = _ints(a), _ints(b)
    ma, mb, shift = int(ma), int(mb), int(shift)
    rc = int(_round_const(shift))
    lo, hi = int_range(out_bits)
    dt = out_dtype(out_bits)
    fits = a.shape == b.shape and a.size and 0 <= shift <= 62
    if fits and _cheap_absmax(a) * abs(ma) + _cheap_absmax(b) * abs(mb) + rc >= _I32:
        fits = _absmax(a) * abs(ma) + _absmax(b) * abs(mb) + rc < _I32
    if fits:
        torch = _torch()
        y = _scratch("add", a.shape, torch.int32).copy_(_t(a))  # |a|*|ma| < 2**31 (or ma == 0: a wrap is multiplied away)
        if ma != 1:
            y.mul_(ma)
        y.add_(_t(b).to(torch.int32), alpha=mb)
        if rc:
            y.add_(rc)
        if shift:
            y >>= min(shift, 31)
        return _np(y.clamp_(max(lo, -_I32), min(hi, _I32 - 1)), dt)
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    y = (a64 * ma + b64 * mb + rc) >> shift
    return saturate(y, out_bits)


def isqrt(v: np.ndarray, bits: int = LN_VAR_BITS) -> np.ndarray:
    """Exact ``floor(sqrt(v))`` for ``0 <= v < 2**bits``, bit by bit (one compare per result bit).

    For ``bits <= 52`` the same result comes from a float64 guess (``v`` is exact in float64 and
    the correctly rounded root is within one of the floor) corrected by exact integer compares.
    """
    v = np.asarray(v, dtype=np.int64)
    if bits <= 52 and (v.size == 0 or v.min() >= 0):
        root = np.sqrt(v.astype(np.float64)).astype(np.int64)
        root -= root * root > v
        root += (root + 1) * (root + 1) <= v
        return root
    root = np.zeros_like(v)
    for bit in range((bits + 1) // 2 - 1, -1, -1):
        trial = root | (1 << bit)
        root = np.where(trial * trial <= v, trial, root)
    return root


def add_const(x: np.ndarray, const: np.ndarray, out_bits: int) -> np.ndarray:
    """Constant add (position embeddings): ``saturate(x + const, out_bits)``, ``const`` broadcast onto ``x``."""
    return saturate(np.asarray(x, dtype=np.int64) + np.asarray(const, dtype=np.int64), out_bits)


def _layernorm_int64(x, gamma, beta, shift, out_bits, frac_bits, recip_bits, in_shift) -> np.ndarray:
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
    n = saturate((d * recip + (1 << (norm_shift - 1))) >> norm_shift, LN_NORM_BITS).astype(np.int64)
    y = (n * np.asarray(gamma, dtype=np.int64) + np.asarray(beta, dtype=np.int64) + int(_round_const(shift))) >> int(shift)
    return saturate(y, out_bits)


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

    Computed in int32 for ``|x << in_shift| <= 2**15`` (N < 2**15): ``sum(d*d)`` as
    ``sum(x*x) - 2*mean*sum(x) + N*mean**2`` (``x*x <= 2**30``, sums in int64); step 5 with
    ``r = rh*2**k + rl`` as ``(d*rh + ((d*rl + 2**(ns-1)) >> k)) >> (ns-k)``, bounded per row by
    ``|d| <= isqrt(sum(d*d))``; step 6 while ``2**(LN_NORM_BITS-1)*max|gamma| + max|beta + round| < 2**31``.
    Anything wider is computed in int64.
    """
    x = _ints(x)
    gamma, beta = np.asarray(gamma, dtype=np.int64), np.asarray(beta, dtype=np.int64)
    shift = int(shift)
    args = (gamma, beta, shift, out_bits, frac_bits, recip_bits, in_shift)
    ns = recip_bits - frac_bits
    n_ch = x.shape[-1] if x.ndim else 0
    if x.size == 0 or not 0 < n_ch < 1 << 15 or not 1 <= ns <= 30 or not 0 <= shift <= 62 or recip_bits > 46 \
            or LN_NORM_BITS > 16:
        return _layernorm_int64(x, *args)
    sh = None if in_shift is None else np.asarray(in_shift, dtype=np.int64)
    if sh is not None and sh.size and (sh.min() < 0 or sh.max() > 15):
        return _layernorm_int64(x, *args)
    smax = 0 if sh is None else int(sh.max(initial=0))
    if _cheap_absmax(x) << smax > 1 << 15 and _absmax(x) << smax > 1 << 15:
        return _layernorm_int64(x, *args)
    torch = _torch()
    xt = _scratch("ln_x", x.shape, torch.int32).copy_(_t(x))  # worked on in place below
    if sh is not None:
        xt <<= _i32(sh)
    s1 = xt.sum(-1, keepdim=True, dtype=torch.int32)  # |sum(x)| <= N*2**15 < 2**30
    s2 = torch.mul(xt, xt, out=_scratch("ln_n", x.shape, torch.int32)).sum(-1, keepdim=True, dtype=torch.int64)  # x*x <= 2**30
    s1, s2 = s1.numpy().astype(np.int64), s2.numpy()  # per-row arithmetic below in int64
    mean = (s1 + n_ch // 2) // n_ch  # |mean| <= 2**15
    vsum = s2 - 2 * mean * s1 + n_ch * mean * mean  # sum((x - mean)**2), < 2**47
    std = np.maximum(isqrt(vsum // n_ch), 1)
    recip = (np.int64(1) << recip_bits) // std
    dmax = np.minimum(isqrt(vsum), 1 << 16)  # |d_i|**2 <= sum(d*d)
    k = min(14, ns)
    rh, rl = recip >> k, recip & ((1 << k) - 1)
    b_bound = dmax * ((1 << k) - 1) + (1 << (ns - 1))
    if rh.max() >= _I32 or b_bound.max() >= _I32 or (dmax * rh + (b_bound >> k) + 1).max() >= _I32:
        return _layernorm_int64(x, *args)
    xt -= torch.from_numpy(mean.astype(np.int32))  # d, |d| <= 2**16
    n = torch.mul(xt, torch.from_numpy(rl.astype(np.int32)), out=_scratch("ln_n", x.shape, torch.int32))
    n += 1 << (ns - 1)
    n >>= k
    n.addcmul_(xt, torch.from_numpy(rh.astype(np.int32)))
    n >>= ns - k
    n.clamp_(*int_range(LN_NORM_BITS))
    lo, hi = int_range(out_bits)
    dt = out_dtype(out_bits)
    bias = beta + int(_round_const(shift))
    if (1 << (LN_NORM_BITS - 1)) * int(np.abs(gamma).max(initial=0)) + int(np.abs(bias).max(initial=0)) < _I32:
        y = torch.addcmul(_i32(bias), n, _i32(gamma), out=n)
        if shift:
            y >>= min(shift, 31)
        return _np(y.clamp_(max(lo, -_I32), min(hi, _I32 - 1)), dt)
    y = (n.numpy().astype(np.int64) * gamma + bias) >> shift
    return saturate(y, out_bits)


# ----------------------------------------------------------------------------- softmax
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
    v = s.copy()
    for step in (32, 16, 8, 4, 2, 1):  # priority encoder as a binary search: p = floor(log2(s)), 0 for s <= 1
        up = (v >> step) > 0
        p += up * step
        v = np.where(up, v >> step, v)
    mant = np.where(p >= log_bits, s >> np.maximum(p - log_bits, 0), s << np.maximum(log_bits - p, 0))
    idx = mant & ((1 << log_bits) - 1)
    table = _LOG2 if (frac_bits, log_bits) == (SOFTMAX_FRAC_BITS, SOFTMAX_LOG_BITS) else log2_table(log_bits, frac_bits)
    return (p << frac_bits) + table[idx]


def _neg_log2_p(t, valid, frac_bits, exp_bits) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Steps 1-4 of :func:`softmax_log2` in int64: ``L - exp_bits*2**frac_bits + d`` (``-log2(p)`` with
    ``frac_bits`` fractional bits, >= 0 where a key is valid), ``valid`` broadcast onto ``t``, and the exp ROM."""
    t = np.asarray(t, dtype=np.int64)
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
    return log2_fixed(s, frac_bits) - (exp_bits << frac_bits) + d, valid, table


def _softmax_log2_int64(t, valid, code_bits, frac_bits, exp_bits, sqrt2) -> np.ndarray:
    zero_code = (1 << code_bits) - 1
    q, valid, _ = _neg_log2_p(t, valid, frac_bits, exp_bits)
    if sqrt2:
        q *= 2
    q += 1 << (frac_bits - 1)
    q >>= frac_bits
    np.clip(q, 0, zero_code, out=q)
    if valid is not None:
        q[~valid] = zero_code
    return q.astype(out_dtype(code_bits, signed=False))


_EXP_CAPPED: dict[tuple[int, int, int], object] = {}


def _exp_capped(frac_bits: int, exp_bits: int, cap: int):
    """The exp ROM and its shifter folded into one table over ``d = 0..cap``: ``EXP[d mod 2**f] >> (d >> f)``."""
    key = (frac_bits, exp_bits, cap)
    if key not in _EXP_CAPPED:
        d = np.arange(cap + 1, dtype=np.int64)
        table = exp2_table(frac_bits, exp_bits)[d & ((1 << frac_bits) - 1)] >> np.minimum(d >> frac_bits, 63)
        _EXP_CAPPED[key] = _torch().from_numpy(table.astype(np.int32))
    return _EXP_CAPPED[key]


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

    Computed in int32 with ``d`` capped at ``cap = max(exp_bits+1, 2**code_bits-1) << frac_bits``,
    which changes nothing: past ``(exp_bits+1) << frac_bits`` every ``e`` is 0, and since
    ``L >= exp_bits << frac_bits`` on a row with a valid key, past ``(2**code_bits-1) << frac_bits``
    every code is the zero code. Steps 1-2 become one lookup of a ``cap+1``-entry table.
    """
    t = _ints(t)
    zero_code = (1 << code_bits) - 1
    cap = max(exp_bits + 1, zero_code) << frac_bits
    mult = 2 if sqrt2 else 1
    args = (valid, code_bits, frac_bits, exp_bits, sqrt2)
    if t.ndim == 0 or t.size == 0 or not 1 <= frac_bits <= 14 or not 0 <= exp_bits <= 24 \
            or mult * cap >= 1 << 14 or t.shape[-1] << exp_bits >= _I32:
        return _softmax_log2_int64(t, *args)
    tlo, thi = _dtype_bounds(t) if t.dtype.itemsize <= 2 else _value_bounds(t)
    if tlo < -(1 << 15) or thi >= 1 << 15:
        return _softmax_log2_int64(t, *args)
    torch = _torch()
    tt = _t(t) if t.dtype == np.int16 else _t(t).to(torch.int16)  # int16 holds t, d <= cap and the codes' sums
    invalid = None
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        try:
            onto = np.broadcast_shapes(valid.shape, t.shape) == t.shape
        except ValueError:
            onto = False
        if not onto:
            return _softmax_log2_int64(t, *args)
        invalid = ~torch.from_numpy(np.array(valid))
        tt = tt.masked_fill(invalid, -(1 << 15))  # masked keys never beat a valid one to the max
    mx = tt.amax(-1, keepdim=True)
    lb = (mx.to(torch.int32) - cap).clamp_(min=-(1 << 15)).to(torch.int16)
    d = torch.maximum(tt, lb, out=_scratch("sm_d", t.shape, torch.int16))
    d.sub_(mx).neg_()  # d = min(mx - t, cap): max(t, mx - cap) - mx lies in [-cap, 0]
    if invalid is not None:
        d.masked_fill_(invalid, cap)  # e = 0 and the zero code
    idx = _scratch("sm_i", (d.numel(),), torch.int32).copy_(d.reshape(-1))
    e = torch.index_select(_exp_capped(frac_bits, exp_bits, cap), 0, idx, out=_scratch("sm_e", (d.numel(),), torch.int32))
    e = e.view(d.shape)
    s = np.maximum(e.sum(-1, keepdim=True, dtype=torch.int32).numpy().astype(np.int64), 1)  # < T*2**exp_bits
    c = (log2_fixed(s, frac_bits) - (exp_bits << frac_bits)) * mult + (1 << (frac_bits - 1))
    c = np.maximum(c, 0)  # a row without a valid key: every d is cap, so every code saturates
    if mult * cap + int(c.max()) >= 1 << 15:
        q = d.to(torch.int32).mul_(mult).add_(torch.from_numpy(c.astype(np.int32)))
    else:
        q = d.mul_(mult) if mult != 1 else d
        q.add_(torch.from_numpy(c.astype(np.int16)))  # mult*d + c < 2**15
    q >>= frac_bits
    return _np(q.clamp_(max=zero_code), out_dtype(code_bits, signed=False))  # q >= 0: d >= 0 and c >= 0


def tulq_levels(knee: int, step_bits: int, grid_bits: int, sqrt2: bool = False) -> int:
    """How many distinct values ``softmax_tulq`` can write (zero included): the uniform levels
    ``2**(step_bits-knee) .. 2**step_bits`` steps of ``2**-step_bits``, the log levels below the knee down to
    ``2**-grid_bits`` (powers of two, or with ``sqrt2`` of sqrt(2): twice as many), and 0."""
    return (1 << step_bits) - (1 << (step_bits - knee)) + 1 + (2 if sqrt2 else 1) * (grid_bits - knee) + 1


def tulq_problem(knee: int, step_bits: int, grid_bits: int, exp_bits: int = SOFTMAX_EXP_BITS) -> str | None:
    """What is wrong with a truncated uniform-log2 setting (:func:`softmax_tulq`), or None."""
    if 0 <= knee <= step_bits <= grid_bits <= MAX_TULQ_GRID_BITS and step_bits < exp_bits:
        return None
    return (f"knee {knee}, step_bits {step_bits}, grid_bits {grid_bits} need knee <= step_bits <= grid_bits <= "
            f"{MAX_TULQ_GRID_BITS}, knee >= 0 and step_bits < exp_bits ({exp_bits})")


def softmax_tulq(
    t: np.ndarray,
    valid: np.ndarray | None = None,
    knee: int = 1,
    step_bits: int = 3,
    grid_bits: int = 11,
    frac_bits: int = SOFTMAX_FRAC_BITS,
    exp_bits: int = SOFTMAX_EXP_BITS,
    sqrt2: bool = False,
) -> np.ndarray:
    """Softmax over the last axis through a truncated uniform-log2 quantizer, as levels ``y ~ p * 2**grid_bits``.

    The row's steps 1-4 are :func:`softmax_log2`'s; with ``l = L - exp_bits*2**frac_bits + d >= 0`` (that is
    ``-log2(p)`` with ``frac_bits`` fractional bits), per element:

    * uniform region, ``l >> frac_bits < knee`` (``p > 2**-knee``): ``e = EXP[l mod 2**frac_bits] >> (l >>
      frac_bits)`` (the exp ROM again, ``~ p * 2**exp_bits``), ``y = ((e + 2**(exp_bits-step_bits-1)) >>
      (exp_bits - step_bits)) << (grid_bits - step_bits)``: ``p`` rounded to a step of ``2**-step_bits``;
    * log region: ``j = (l + 2**(frac_bits-1)) >> frac_bits`` (:func:`softmax_log2`'s code), ``y = 2**(grid_bits
      - j)`` for ``j <= grid_bits``, else 0 (truncated: probabilities below ``2**-grid_bits`` vanish). With
      ``sqrt2`` half steps, :func:`softmax_log2`'s base-sqrt(2) code ``j = (2 l + 2**(frac_bits-1)) >>
      frac_bits`` and ``y = 2**(grid_bits - j/2)`` for even ``j``, ``(181 * 2**(grid_bits - (j-1)/2) + 128) >> 8``
      for odd ``j`` (a shifted constant, rounded to the grid), 0 past ``j = 2 grid_bits``.

    Masked positions (and rows with no valid key) write 0. ``0 <= knee <= step_bits <= grid_bits``,
    ``step_bits < exp_bits``, ``grid_bits <= MAX_TULQ_GRID_BITS``; the result is unsigned, at most
    ``2**grid_bits``, and :func:`tulq_levels` distinct values. P.V then runs as an ordinary product on
    the array (``y`` streamed in digit passes) with scale ``s_V * 2**-grid_bits``.
    """
    problem = tulq_problem(knee, step_bits, grid_bits, exp_bits)
    if problem:
        raise ValueError(f"softmax_tulq: {problem}")
    ell, valid, table = _neg_log2_p(t, valid, frac_bits, exp_bits)
    ell = np.maximum(ell, 0)
    mask = (1 << frac_bits) - 1
    whole = ell >> frac_bits
    level = (table[ell & mask] >> np.minimum(whole, 63)) + (1 << (exp_bits - step_bits - 1))
    uniform = (level >> (exp_bits - step_bits)) << (grid_bits - step_bits)
    one = np.int64(1)
    if sqrt2:
        j = (2 * ell + (1 << (frac_bits - 1))) >> frac_bits
        even = np.left_shift(one, np.clip(grid_bits - j // 2, 0, 62))
        odd = (np.left_shift(np.int64(SQRT_HALF_Q8), np.clip(grid_bits - (j - 1) // 2, 0, 62)) + 128) >> 8
        log = np.where(j <= 2 * grid_bits, np.where(j % 2 == 0, even, odd), 0)
    else:
        j = (ell + (1 << (frac_bits - 1))) >> frac_bits
        log = np.where(j <= grid_bits, np.left_shift(one, np.clip(grid_bits - j, 0, 62)), 0)
    y = np.where(whole < knee, uniform, log)
    if valid is not None:
        y = np.where(valid, y, 0)
        y = np.where(valid.any(axis=-1, keepdims=True), y, 0)
    return y.astype(out_dtype(grid_bits + 2, signed=True))


def window_scores(t: np.ndarray, bias: np.ndarray | None = None, regions: np.ndarray | None = None,
                  bits: int = SOFTMAX_IN_BITS) -> tuple[np.ndarray, np.ndarray | None]:
    """Window attention's scores as the softmax unit reads them, and which keys take part in each row.

    ``t`` [..., W, H, N, N]: log2-unit scores of W windows of N tokens, H heads. ``bias`` (broadcast
    onto the trailing dimensions, e.g. the relative position bias [H, N, N] on the scores' grid) is
    added with saturation at ``bits``: ``saturate(t + bias, bits)``. ``regions`` [W, N]: the region id
    of each token of a (shifted) window; key j takes part in query i's row iff ``regions[w, i] ==
    regions[w, j]`` (a comparator per key). Returns the scores and that mask, broadcastable onto
    ``t`` (None without regions), for ``softmax_log2``.
    """
    if bias is not None:
        t = add_const(t, bias, bits)
    if regions is None:
        return t, None
    r = np.asarray(regions)
    same = r[:, None, :, None] == r[:, None, None, :]  # [W, 1, N, N]
    return t, same.reshape((1,) * (np.ndim(t) - 4) + same.shape)


SQRT_HALF_Q8 = 181  #: round(2**8 / sqrt(2)): odd log-sqrt(2) codes multiply by 181 and shift right by 8


def log2_acc_shift(code_bits: int = 4, sqrt2: bool = False) -> int:
    """The accumulator of ``matmul_log2`` holds ``sum p*V`` times ``2**log2_acc_shift``."""
    top = (1 << code_bits) - 2
    return top // 2 + 8 if sqrt2 else top


def _log2_weights_int64(codes, code_bits, sqrt2) -> np.ndarray:
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


def log2_weights(codes: np.ndarray, code_bits: int = 4, sqrt2: bool = False) -> np.ndarray:
    """The integer attention weights codes stand for, ``p * 2**log2_acc_shift``; 0 for the zero code.

    Base 2: ``2**(K - c)``. Base sqrt(2): ``2**(K - c/2)`` for even c and
    ``(2**(K - (c-1)/2) * 181) >> 8`` for odd c (a constant shift-add), K = log2_acc_shift.
    For codes in range, base 2 is ``2**K >> c`` (K = 2**code_bits - 2, so the zero code
    ``K + 1`` gives 0) and base sqrt(2) a lookup in the table of all codes.
    """
    codes = _ints(codes)
    n = 1 << code_bits
    lo, hi = _value_bounds(codes)
    # small inputs (the tables hw/ builds from) stay in numpy, which also keeps torch out of `ptq2rtl verilog`
    if codes.size <= n or lo < 0 or hi >= n or code_bits > 12:
        w = _log2_weights_int64(codes, code_bits, sqrt2)
        return w.astype(_dtype_holding(int(w.min(initial=0)), int(w.max(initial=0))))
    torch = _torch()
    table = _log2_weights_int64(np.arange(n), code_bits, sqrt2)
    dt = _dtype_holding(int(table.min()), int(table.max()))
    tdt = _np_to_torch(dt)
    k = log2_acc_shift(code_bits, sqrt2)
    if not sqrt2 and n <= np.iinfo(dt).bits:  # 2**k >> c: the zero code c = k+1 shifts the one out
        return torch.bitwise_right_shift(torch.tensor([1 << k], dtype=tdt), _t(codes).to(tdt)).numpy()
    idx = _t(codes).reshape(-1).to(torch.int32)
    return torch.from_numpy(table.astype(dt)).index_select(0, idx).view(codes.shape).numpy()


def matmul_log2(codes: np.ndarray, v: np.ndarray, code_bits: int = 4, acc_bits: int = ACC_BITS,
                sqrt2: bool = False) -> np.ndarray:
    """Attention x V with log2 codes: ``out[i] = sum_j V[j] * log2_weights(q[i, j])``.

    No multiplier for base 2 (``V << (2**code_bits - 2 - q)``); base sqrt(2)
    adds one constant shift-add for odd codes. The zero code contributes
    nothing. The result has scale ``s_V * 2**-log2_acc_shift``; the
    accumulator saturates at ``acc_bits``.
    """
    return saturate(exact_matmul(log2_weights(codes, code_bits, sqrt2), v), acc_bits)


# ----------------------------------------------------------------------------- tables and pooling
def gelu(x: np.ndarray, table: np.ndarray, in_bits: int = GELU_IN_BITS) -> np.ndarray:
    """GELU unit: a ROM of ``2**in_bits`` entries indexed by the signed input, ``table[x + 2**(in_bits-1)]``.

    The table maps the input grid to the output grid and is computed at
    quantization time; the unit itself is exact.
    """
    x = _ints(x)
    table = np.asarray(table, dtype=np.int64)
    dt = _dtype_holding(int(table.min(initial=0)), int(table.max(initial=0)))
    off = 1 << (in_bits - 1)
    lo, hi = _dtype_bounds(x) if x.dtype == np.int8 and in_bits == 8 else _value_bounds(x)
    if x.size == 0 or table.ndim != 1 or lo + off < 0 or hi + off >= len(table):
        return table[x.astype(np.int64) + off].astype(dt)
    torch = _torch()
    if x.dtype == np.int8 and in_bits == 8:  # x mod 256 indexes the table rotated by half: no add
        idx = _scratch("gelu", (x.size,), torch.int32).copy_(_t(x).view(torch.uint8).reshape(-1))
        table = table[np.arange(256) ^ 128]
    else:
        idx = _scratch("gelu", (x.size,), torch.int32).copy_(_t(x).reshape(-1)).add_(off)
    return torch.from_numpy(table.astype(dt)).index_select(0, idx).view(x.shape).numpy()


def embedding(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Row lookup ``table[ids]`` (token, position or segment embeddings), in the table's integer dtype."""
    return _ints(table)[np.asarray(ids, dtype=np.int64)]


def gather_rows(rows: np.ndarray, index: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
    """Rows picked by an index table: ``rows`` [..., R, C], ``index`` any shape of integers in [-1, R-1];
    out [..., *index.shape, C] is ``rows[..., index[p], :]``, and ``fill`` [C] where ``index[p]`` is -1.

    Window partition, cyclic shift, padding and 2x2 patch merging are such gathers: the values move,
    none changes (an address generator, no arithmetic).
    """
    rows = np.asarray(rows)
    index = np.asarray(index, dtype=np.int64)
    out = np.take(rows, np.maximum(index, 0).reshape(-1), axis=-2)
    pad = index.reshape(-1) < 0
    if pad.any():
        out[..., pad, :] = np.asarray(fill, dtype=rows.dtype)
    return out.reshape(rows.shape[:-2] + index.shape + rows.shape[-1:])


def mean_pool(x: np.ndarray, valid: np.ndarray | None = None, out_bits: int = RESIDUAL_BITS,
              frac_bits: int = 0) -> np.ndarray:
    """Mean over the valid rows (all rows when ``valid`` is None) of ``x`` [..., T, D] with ``frac_bits``
    fractional bits: ``floor((sum * 2**frac_bits + n//2) / n)``, round half up, saturated to ``out_bits``;
    ``n >= 1``."""
    x = np.asarray(x, dtype=np.int64)
    valid = np.ones(x.shape[:-1], bool) if valid is None else np.asarray(valid, dtype=bool)
    valid = valid[..., None]
    n = np.maximum(valid.sum(axis=-2), 1)
    total = np.where(valid, x, 0).sum(axis=-2) << frac_bits
    return saturate((total + n // 2) // n, out_bits)


# ------------------------------------------------------------------ binary operands (1-bit MAC modes)
def sign_values(bits: np.ndarray) -> np.ndarray:
    """Sign bits as the values they stand for: 1 -> +1, 0 -> -1 (int8)."""
    return (2 * np.asarray(bits, dtype=np.int8) - 1).astype(np.int8)


def binarize(x: np.ndarray, threshold: np.ndarray | int = 0) -> np.ndarray:
    """One bit per element: ``1`` where ``x >= threshold`` (per channel, the last axis, or one for all), else
    ``0``; a compare, no rounding. As a sign bit, 1 is +1 and 0 is -1 (``sign(0)`` is +1)."""
    return (_ints(x).astype(np.int64) >= np.asarray(threshold, dtype=np.int64)).astype(np.uint8)


BINARY_MODES = ("xnor", "and")  #: the MAC array's binary modes: ±1 x ±1, and {0,1} x ±1


def binary_matmul(a: np.ndarray, b: np.ndarray, mode: str = "xnor") -> np.ndarray:
    """Activation x activation in a binary mode: ``a`` [..., M, K] bits (sign bits for ``"xnor"``, {0,1} for
    ``"and"``), ``b`` [..., K, N] sign bits; :func:`xnor_popcount` / :func:`and_popcount` of every row of ``a``
    with every column of ``b``, exactly."""
    left = sign_values(a) if mode == "xnor" else np.asarray(a, dtype=np.int8)
    return exact_matmul(left, sign_values(b))


def xnor_popcount(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``±1 · ±1`` products summed as XNOR-popcount: ``x`` [..., K] and ``w`` [N, K] sign bits;
    ``2 * popcount(XNOR(x, w)) - K + bias``, which is ``sign_values(x) @ sign_values(w).T + bias`` exactly
    (a pair of equal bits is a product of +1, a pair of different bits one of -1). No saturation: the
    magnitude is at most ``K + |bias|``."""
    return accumulate(sign_values(x), sign_values(w), bias)


def and_popcount(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``{0,1} · ±1`` products summed as AND-popcount: ``a`` [..., K] bits, ``w`` [N, K] sign bits;
    ``2 * popcount(a AND w) - popcount(a) + bias``, which is ``a @ sign_values(w).T + bias`` exactly (a 0 of
    ``a`` adds nothing, a 1 adds its weight's sign). Magnitude at most ``K + |bias|``."""
    return accumulate(np.asarray(a, dtype=np.int8), sign_values(w), bias)


def bi_attention(scores: np.ndarray, valid: np.ndarray | None = None, threshold: int = 0) -> np.ndarray:
    """A binary attention map in place of softmax: ``1`` where a score is ``>= threshold`` and its key takes
    part (``valid``, broadcast onto ``scores``; all keys when None), else ``0``. One compare an element."""
    bits = binarize(scores, threshold)
    return bits if valid is None else (bits & np.asarray(valid, dtype=bool)).astype(np.uint8)


def binary_embedding(ids: np.ndarray, bits: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A binarized embedding table: row ``v`` is ``scale[v] * sign_values(bits[v])`` (one magnitude a row, one
    sign bit an entry); out [..., D] in ``scale``'s integer dtype, a lookup and a negation."""
    ids = np.asarray(ids, dtype=np.int64)
    scale = _ints(scale)
    return (sign_values(bits[ids]) * scale[ids][..., None]).astype(scale.dtype)
