"""``mptq`` (MPTQ-ViT, seed): SmoothQuant with a bias term (SQ-b) at the linears' asymmetric inputs.

* SQ-b: at every post-LayerNorm and post-GELU point (the inputs of Q/K/V, the FFN's two linears and the
  head) channel c is shifted by its centre ``z_c = (max_c + min_c) / 2`` and divided by the smoothing factor
  ``s_c = h_c ** alpha / w_c ** (1 - alpha)``, ``h_c = (max_c - min_c) / 2`` its half range and ``w_c`` the
  largest weight magnitude of input column c over the point's consumers; the consumers absorb both,
  ``W' = W diag(s)`` and ``b' = b + W z``, so the FP32 output is unchanged. The shifted, smoothed tensor
  then takes one symmetric per-tensor grid. In the program the transform is a channel map (``x / s + delta``
  with ``delta = -z / s`` in whole grid steps, the requantizer's zero points, so inside the ``bits``-wide
  range: each channel's range is widened to include zero, which guarantees one, and a channel that never
  crosses zero is shifted only as far as that allows; :func:`place`): folded into LayerNorm's gamma and
  beta where the LayerNorm feeds only
  linears (ViT); on BERT, where the LayerNorm output is also the residual stream, the residual stays the
  int16 tensor it was (exact) and the requantizer that narrows it for the linears carries the map as
  per-channel multipliers and zero points; after GELU, the ROM writes a 16-bit per-tensor grid and a
  per-channel requantizer narrows it (as ``repq`` does).
* ``alpha`` per point (the paper's migration strength, left to the implementation here): searched over
  :data:`ALPHAS` for the least squared error of the consumers' outputs on the calibration rows, with the
  weights and the input quantized at the plan's widths.
* The shift's bias term sits on the quantized weights (:func:`correct_shift_bias`), computed once the
  weight grids are chosen.
* The other chosen points (Q, K, V, the attention output: no consumer weights to migrate into) take the
  range of least squared error on their calibration sample (:data:`OBSERVER`).
* Everything else as RepQ's plan (``quant.methods.repq``): log-sqrt(2) attention codes and per-channel
  weights with a searched clipping ratio, recalibrated on the rewritten weights.
"""

from __future__ import annotations

import torch

from quant.methods import register_method
from quant.methods.repq import fold_map, reparameterized_plan
from quant.plan import QuantPlan, Sites, collect, linears
from quant.quantizers import QParams, fake_weight, search_weight_clip, weight_scales
from sim import intops

ALPHAS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)  #: migration strengths tried per point (0: shift only)
OBSERVER = "mse"  #: the range of every other chosen point (Q, K, V, the attention output): least squared error


def smooth_factors(obs, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """Every channel's smoothing factor ``s_c = h_c ** alpha / w_c ** (1 - alpha)`` (geometric mean 1)."""
    half = ((obs.ch_max.clamp_min(0) - obs.ch_min.clamp_max(0)) / 2).clamp_min(1e-8)
    w_max = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0).clamp_min(1e-8)
    s = half.pow(alpha) / w_max.pow(1 - alpha)
    return s / s.log().mean().exp()


def place(lo: torch.Tensor, hi: torch.Tensor, s: torch.Tensor, bits: int) -> tuple[QParams, torch.Tensor]:
    """The per-tensor grid of ``x / s + delta`` and the shift ``delta`` (an integer number of grid steps per
    channel, inside the grid's range: the requantizer's zero points are ``bits`` wide), each channel as near
    its centre as that allows; the scale is the least (in 1 % steps) that holds every channel's range."""
    qmin, qmax = intops.int_range(bits)
    lo, hi = lo.clamp_max(0) / s, hi.clamp_min(0) / s  # with zero inside, some zero point in range fits
    scale = float((hi - lo).max().clamp_min(1e-8)) / (qmax - qmin)
    while True:
        first = torch.ceil(qmin - lo / scale).clamp_min(qmin)  # the zero points that keep the channel inside
        last = torch.floor(qmax - hi / scale).clamp_max(qmax)
        if bool((first <= last).all()):
            zp = torch.minimum(torch.maximum(torch.round(-(lo + hi) / 2 / scale), first), last)
            return QParams(scale, 0, bits), zp * scale
        scale *= 1.01


def smooth(spec, point: str, consumers: list[str], obs, bits: int, *, wbits: list[int],
           alphas: tuple[float, ...] = ALPHAS) -> tuple[QParams, torch.Tensor, torch.Tensor, float]:
    """SQ-b at ``point``: choose alpha for the least squared error of the consumers' outputs on the
    calibration rows, with the input and the weights quantized as the plan will (clipped per-channel weights,
    the shift's bias term on the quantized weights: :func:`correct_shift_bias`); fold the shift and the
    smoothing into the consumers. Returns the per-tensor grid, the channel map (s, delta) and the alpha."""
    lin = linears(spec)
    weights = [lin[name].w for name in consumers]
    rows = obs.rows.to(weights[0].dtype)
    best, best_err = None, float("inf")
    for alpha in alphas:
        s = smooth_factors(obs, weights, alpha)
        grid, delta = place(obs.ch_min, obs.ch_max, s, bits)
        x = rows / s + delta
        xq = grid.fake(x)
        err = 0.0
        for w, b in zip(weights, wbits):
            w = w * s[None, :]
            q = fake_weight(w, weight_scales(w, b, search_weight_clip(w, b)), b)
            err += float((xq @ q.T + (w - q) @ delta - x @ w.T).pow(2).mean())
        if err < best_err:
            best, best_err = (alpha, grid, s, delta), err
    alpha, grid, s, delta = best
    fold_map(spec, consumers, s, delta)
    return grid, s, delta, alpha


@register_method("mptq")
def mptq(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    sites = sites or Sites()
    observers = collect(spec, batches, progress=progress, desc="calibrate (mptq)")
    chosen, consumers_of = {}, {}

    def remap(spec, point, consumers, obs, bits):
        consumers_of[point] = consumers
        grid, s, delta, chosen[point] = smooth(spec, point, consumers, obs, bits,
                                               wbits=[sites.w(n, wbits) for n in consumers])
        return grid, s, delta

    plan = reparameterized_plan(spec, observers, wbits, abits, sites=sites, method="mptq", remap=remap,
                                observer=OBSERVER)
    correct_shift_bias(plan, consumers_of)
    plan.meta["sqb_alpha"] = chosen
    return plan


def correct_shift_bias(plan: QuantPlan, consumers: dict[str, list[str]]) -> None:
    """The shifts' bias terms on the integer weights: ``b' = b + W z`` was folded with the float ``W``, but the
    program multiplies the shifted input by the quantized one, whose error times a shift of a whole channel
    range is a constant error in every output (at W8A8 on minilm it lowered the cosine from 0.996 to 0.94).
    The bias takes ``(W - Q(W)) delta`` so that ``Q(W) (x / s + delta) + b'`` keeps the float constant."""
    lin = linears(plan.spec)
    for point, (_, delta) in plan.channel_maps.items():
        for name in consumers[point]:
            w = lin[name].w
            lin[name].b = lin[name].b + (w - fake_weight(w, plan.weight_scales[name], plan.wbits_of(name))) @ delta
