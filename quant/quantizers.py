"""Uniform and log2 quantizers, and the dyadic multipliers that carry scales into integer programs.

Everything here runs at quantization time and may use float; the integer
program it produces never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sim import intops
from sim.ops import signed_bits


class QuantError(ValueError):
    """A quantization request that cannot be honoured (bad bit width, unrepresentable scale)."""


def check_bits(name: str, bits: int, lo: int = 2, hi: int = 8) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise QuantError(f"{name}={bits!r} outside the accepted range [{lo}, {hi}]")
    return bits


@dataclass(frozen=True)
class QParams:
    """A per-tensor uniform grid: real = scale * (q - zero_point), q in the ``bits``-wide signed range."""

    scale: float
    zero_point: int
    bits: int
    signed: bool = True

    @property
    def qmin(self) -> int:
        return intops.int_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return intops.int_range(self.bits, self.signed)[1]

    def quantize(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Float -> integers on this grid (round half to even, then clamp): used only at the program's inputs."""
        x = torch.as_tensor(x, dtype=torch.float64)
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)
        return q.to(torch.int64).numpy()

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize in float: what the paper protocol does at a quantization point."""
        if x.requires_grad and torch.is_grad_enabled():
            q = torch.clamp(torch.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)
            return ((q - self.zero_point) * self.scale).to(x.dtype)
        # the same values in place on one temporary (calibration searches call this thousands of times)
        q = torch.div(x, self.scale).round_().add_(self.zero_point).clamp_(self.qmin, self.qmax)
        return q.sub_(self.zero_point).mul_(self.scale).to(x.dtype)


@dataclass(frozen=True)
class TwoScale(QParams):
    """Two grids a power of two apart on one integer axis (TSPTQ's value-aware two scales): a
    ``code_bits``-wide code whose top bit picks the grid, ``2**(code_bits-1)`` fine steps from ``low``
    up, then ``2**(code_bits-1)`` coarse steps of ``2**shift`` fine steps above them (the coarse levels
    are multiples of ``2**shift``, so the two grids align by a shift). The integer a value quantizes to
    is the decoded level (real = scale * q, zero point 0); ``bits`` is the width that level needs, which
    is what the tensor holds and what the MAC array streams (in digit passes where it exceeds the port)."""

    code_bits: int = 4
    shift: int = 1
    low: int = 0

    def levels(self) -> torch.Tensor:
        """The 2**code_bits decoded levels, ascending (code i < half: fine; the rest coarse)."""
        half, step = 1 << (self.code_bits - 1), 1 << self.shift
        first = ((self.low + half - 1) // step + 1) * step  # the first multiple of the coarse step above the fine grid
        return torch.cat([torch.arange(self.low, self.low + half), first + step * torch.arange(half)])

    def _nearest(self, x: torch.Tensor) -> torch.Tensor:
        lv = self.levels().to(torch.float64)
        v = torch.as_tensor(x, dtype=torch.float64) / self.scale
        return lv[torch.bucketize(v, (lv[1:] + lv[:-1]) / 2)]  # a value half way goes to the lower level

    def quantize(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        return self._nearest(x).to(torch.int64).numpy()

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        return (self._nearest(x) * self.scale).to(x.dtype)


def two_scale_grid(sample: torch.Tensor, code_bits: int, max_bits: int | None = None, *, twin: bool = False,
                   error=None, shifts: range = range(1, 9), steps: int = 24) -> TwoScale:
    """The two-scale grid of least error on ``sample``: every coarse shift whose decoded level fits
    ``max_bits`` (default ``2 * code_bits``), fine scales from the one whose top level reaches the sample's
    maximum down to an eighth of it. The fine grid starts at the sample's minimum (as far down as it
    reaches), or with ``twin`` holds the negative values alone (``low = -2**(code_bits-1)``: two regions,
    the coarse grid from zero up). ``error(grid)`` is the criterion (default: squared error on the sample)."""
    check_bits("code bits", code_bits)
    max_bits = max_bits or 2 * code_bits
    sample = sample.double()
    xmin, xmax = float(sample.min()), max(float(sample.max()), 1e-8)
    half = 1 << (code_bits - 1)
    if error is None:
        def error(grid):
            return float((grid.fake(sample) - sample).pow(2).mean())
    best, best_err = None, float("inf")
    for k in shifts:
        top = TwoScale(1.0, 0, 16, code_bits=code_bits, shift=k, low=-half if twin else 0).levels()[-1].item()
        for i in range(steps):
            scale = xmax / top * 2.0 ** (-3 * i / steps)
            low = -half if twin else int(min(0, max(-(half - 1), round(xmin / scale))))
            grid = TwoScale(scale, 0, 16, code_bits=code_bits, shift=k, low=low)
            bits = signed_bits(low, int(grid.levels()[-1]))
            if bits > max_bits:
                break
            grid = TwoScale(scale, 0, bits, code_bits=code_bits, shift=k, low=low)
            err = error(grid)
            if err < best_err:
                best, best_err = grid, err
    if best is None:
        raise QuantError(f"no two-scale grid of {code_bits}-bit codes fits {max_bits} decoded bits")
    return best


def qparams_from_range(lo: float, hi: float, bits: int, symmetric: bool) -> QParams:
    """The grid covering [lo, hi]: symmetric (zero point 0) or asymmetric with an integer zero point."""
    qmin, qmax = intops.int_range(bits)
    if symmetric:
        amax = max(abs(lo), abs(hi), 1e-8)
        return QParams(amax / qmax, 0, bits)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / (qmax - qmin)
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return QParams(scale, zp, bits)


def pow2_qparams(qp: QParams) -> QParams:
    """Round a grid's scale up to a power of two (nothing that fitted is clipped); zero point kept."""
    return QParams(2.0 ** math.ceil(math.log2(qp.scale)), qp.zero_point, qp.bits, qp.signed)


# ------------------------------------------------------------------ weights
def weight_scales(w: torch.Tensor, bits: int, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Per-output-channel symmetric scales: ``clip * max|w_n| / (2**(bits-1) - 1)``."""
    qmax = (1 << (bits - 1)) - 1
    amax = w.abs().amax(dim=1).clamp_min(1e-12)
    return amax * clip / qmax


def quantize_weight(w: torch.Tensor, scales: torch.Tensor, bits: int) -> np.ndarray:
    """Integer weights ``clamp(round(w / s_n))`` in the symmetric range [-(2**(b-1)-1), 2**(b-1)-1]."""
    qmax = (1 << (bits - 1)) - 1
    q = torch.clamp(torch.round(w.double() / scales.double()[:, None]), -qmax, qmax)
    return q.to(torch.int64).numpy()


def fake_weight(w: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = (1 << (bits - 1)) - 1
    return (torch.clamp(torch.round(w / scales[:, None]), -qmax, qmax) * scales[:, None]).to(w.dtype)


def search_weight_clip(w: torch.Tensor, bits: int, grid: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)) -> torch.Tensor:
    """Per-channel clipping ratio minimizing the squared quantization error of each output channel."""
    best_err = torch.full((w.shape[0],), float("inf"))
    best = torch.ones(w.shape[0])
    for c in grid:
        s = weight_scales(w, bits, c)
        err = (fake_weight(w, s, bits) - w).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, c), best)
    return best


# ------------------------------------------------------------------ log2 probabilities
def fake_log2(p: torch.Tensor, code_bits: int = 4, sqrt2: bool = False) -> torch.Tensor:
    """Probabilities on the log2 grid ``2**-round(-log2 p)`` (or the log-sqrt(2) grid ``2**(-round(-2 log2 p)/2)``);
    codes past ``2**b - 2`` become 0 (matches intops.softmax_log2)."""
    zero_code = (1 << code_bits) - 1
    steps = 2.0 if sqrt2 else 1.0
    code = torch.round(-steps * torch.log2(p.clamp_min(1e-30))).clamp(0, zero_code)
    return torch.where(code < zero_code, torch.exp2(-code / steps), torch.zeros_like(p))


def fake_tulq(p: torch.Tensor, knee: int, step_bits: int, grid_bits: int, sqrt2: bool = False) -> torch.Tensor:
    """Probabilities through the truncated uniform-log2 quantizer (matches intops.softmax_tulq up to its
    fixed-point log2): above ``2**-knee`` rounded to steps of ``2**-step_bits``, below it ``2**-round(-log2 p)``
    (with ``sqrt2``: ``2**(-round(-2 log2 p) / 2)``), 0 past ``2**-grid_bits``."""
    steps = 2.0 if sqrt2 else 1.0
    code = torch.round(-steps * torch.log2(p.clamp_min(1e-30)))
    level = torch.exp2(-code / steps)
    if sqrt2:  # an odd code's level is SQRT_HALF_Q8 / 256 of the even one above it, rounded (half up) on the grid
        odd = torch.floor(torch.exp2(grid_bits - (code - 1) / 2) * intops.SQRT_HALF_Q8 / 256 + 0.5) / 2.0**grid_bits
        level = torch.where(code % 2 == 1, odd, level)
    log = torch.where(code <= steps * grid_bits, level, torch.zeros_like(p))
    uniform = torch.round(p * 2.0**step_bits) / 2.0**step_bits
    return torch.where(p > 2.0**-knee, uniform, log)


def fake_ptf(x: torch.Tensor, grid: QParams, alpha: torch.Tensor) -> torch.Tensor:
    """Power-of-two factors (FQ-ViT): channel c on the grid of scale ``grid.scale * 2**alpha_c`` (symmetric)."""
    scale = grid.scale * torch.exp2(alpha.to(x.dtype))
    return torch.clamp(torch.round(x / scale), grid.qmin, grid.qmax) * scale


# ------------------------------------------------------------------ integer multipliers
def dyadic(m: float | np.ndarray, mult_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Write real multipliers m > 0 as ``M * 2**-shift`` with M an unsigned ``mult_bits``-bit integer.

    frexp gives m = f * 2**e with f in [0.5, 1); M = round(f * 2**mult_bits),
    shift = mult_bits - e. A mantissa that rounds up to 2**mult_bits is renormalized.
    """
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    if np.any(~np.isfinite(m)) or np.any(m <= 0):
        raise QuantError(f"requantization multiplier must be positive and finite, got {m[~(m > 0)][:3]}")
    f, e = np.frexp(m)
    M = np.round(f * (1 << mult_bits)).astype(np.int64)
    shift = mult_bits - e.astype(np.int64)
    top = M == (1 << mult_bits)
    M = np.where(top, M >> 1, M)
    shift = np.where(top, shift - 1, shift)
    # very small multipliers: cap the shift, losing mantissa bits (the product is ~0 anyway)
    over = shift > 62
    M = np.where(over, np.maximum(M >> np.minimum(shift - 62, 62), 0), M)
    shift = np.where(over, 62, shift)
    if np.any(shift < 0):
        raise QuantError(f"requantization multiplier {m.max():.4g} too large for a {mult_bits}-bit M and a right shift")
    return M, shift


def pow2_shift(m: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Power-of-two multipliers as shifts: ``2**-shift`` (M = 1, a right shift) or, for m > 1, ``M = 2**k``
    with no right shift (a left shift). Either way there is no multiplier, only a shifter."""
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    shift = np.round(-np.log2(m)).astype(np.int64)
    if np.any(shift < -15):
        raise QuantError(f"power-of-two multiplier {m.max():.4g} needs a left shift beyond 15")
    return np.left_shift(1, np.maximum(-shift, 0)), np.clip(shift, 0, 62)


def program_inputs(program, inputs) -> dict[str, np.ndarray]:
    """The integer inputs of a program from a data batch: images quantized on the program's input grid."""
    if isinstance(inputs, dict):
        return {t.name: inputs[t.name].numpy() for t in program.inputs}
    spec = program.inputs[0]
    return {spec.name: QParams(spec.scale, spec.zero_point, spec.bits, spec.signed).quantize(inputs)}
