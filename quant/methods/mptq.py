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
* OPT-m at every post-GELU point: the two-region grid (the negative values on a fine grid, the rest on a
  grid ``2**m`` times coarser from zero up: ``quant.quantizers.TwoScale`` with ``twin``), ``m`` and the scale
  searched for the least squared error of fc2's quantized outputs; where that error is below SQ-b's best the
  point takes the two-region grid instead of SQ-b (the GELU table writes the decoded level, an integer on
  the fine grid, and fc2 streams it in digit passes where it is wider than the array's port), else SQ-b.
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
from quant.methods.repq import fold_map, post_gelu_points, post_ln_points, reparameterized_plan
from quant.plan import QuantPlan, Sites, collect, linears
from quant.quantizers import QParams, TwoScale, fake_weight, search_weight_clip, two_scale_grid, weight_scales
from sim import intops

ALPHAS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)  #: migration strengths tried per point (0: shift only)
OBSERVER = "mse"  #: the range of every other chosen point (Q, K, V, the attention output): least squared error
OPT_M_RATIOS = range(1, 7)  #: the coarse region's scale is 2**m times the fine one's, m searched here
OPT_M_ROWS = 512  #: calibration rows the OPT-m search measures the consumers' output error on


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
    _, alpha, grid, s, delta = smooth_search(spec, consumers, obs, bits, wbits=wbits, alphas=alphas)
    fold_map(spec, consumers, s, delta)
    return grid, s, delta, alpha


def smooth_search(spec, consumers: list[str], obs, bits: int, *, wbits: list[int],
                  alphas: tuple[float, ...] = ALPHAS) -> tuple[float, float, QParams, torch.Tensor, torch.Tensor]:
    """SQ-b's alpha search alone (nothing folded): (error, alpha, grid, s, delta) of the best alpha."""
    weights = [linears(spec)[name].w for name in consumers]
    best = (float("inf"),)
    for alpha in alphas:
        s = smooth_factors(obs, weights, alpha)
        grid, delta = place(obs.ch_min, obs.ch_max, s, bits)
        err = consumer_error(obs.rows, s, delta, grid, weights, wbits)
        if err < best[0]:
            best = (err, alpha, grid, s, delta)
    return best


def opt_m(spec, consumers: list[str], obs, bits: int, *, wbits: list[int]) -> tuple[float, TwoScale]:
    """OPT-m at a post-GELU point: the two-region grid (negative values on a fine grid, the rest on one
    ``2**m`` times coarser, ``quant.quantizers.TwoScale`` with ``twin``) whose ratio ``m`` and scale give
    the least squared error of the consumers' outputs on the calibration rows (weights quantized as the
    plan will). Returns that error and the grid."""
    weights = [linears(spec)[name].w for name in consumers]
    quantized = [fake_weight(w, weight_scales(w, b, search_weight_clip(w, b)), b) for w, b in zip(weights, wbits)]
    x = obs.rows[:OPT_M_ROWS].to(weights[0].dtype)
    exact = [x @ w.T for w in weights]

    def error(grid):
        xq = grid.fake(x)
        return sum(float((xq @ q.T - y).pow(2).mean()) for q, y in zip(quantized, exact))

    grid = two_scale_grid(obs.sample, bits, twin=True, error=error, shifts=OPT_M_RATIOS, steps=12)
    return error(grid), grid


def consumer_error(rows: torch.Tensor, s: torch.Tensor, delta: torch.Tensor, grid: QParams,
                   weights: list[torch.Tensor], wbits: list[int]) -> float:
    """The consumers' squared output error on calibration ``rows`` when their input carries ``x / s + delta``
    on ``grid`` and their weights ``W diag(s)`` are quantized as the plan will (clipped per channel, the
    shift's bias term on the quantized weights)."""
    x = rows.to(weights[0].dtype) / s + delta
    xq = grid.fake(x)
    err = 0.0
    for w, b in zip(weights, wbits):
        w = w * s[None, :]
        q = fake_weight(w, weight_scales(w, b, search_weight_clip(w, b)), b)
        err += float((xq @ q.T + (w - q) @ delta - x @ w.T).pow(2).mean())
    return err


@register_method("mptq")
def mptq(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    sites = sites or Sites()
    observers = collect(spec, batches, progress=progress, desc="calibrate (mptq)")
    chosen, consumers_of = {}, {}
    points, twin, searched = post_ln_points(spec), {}, {}
    for point, consumers in post_gelu_points(spec).items():  # OPT-m where it beats SQ-b, else SQ-b
        bits, wbits_of = sites.a(point, abits), [sites.w(n, wbits) for n in consumers]
        err, grid = opt_m(spec, consumers, observers[point], bits, wbits=wbits_of)
        searched[point] = smooth_search(spec, consumers, observers[point], bits, wbits=wbits_of)
        if err < searched[point][0]:
            twin[point] = grid
        else:
            points[point] = consumers

    def remap(spec, point, consumers, obs, bits):
        consumers_of[point] = consumers
        if point in searched:  # fc2 is not touched by the maps before it: the search above stands
            _, chosen[point], grid, s, delta = searched[point]
            fold_map(spec, consumers, s, delta)
            return grid, s, delta
        grid, s, delta, chosen[point] = smooth(spec, point, consumers, obs, bits,
                                               wbits=[sites.w(n, wbits) for n in consumers])
        return grid, s, delta

    plan = reparameterized_plan(spec, observers, wbits, abits, sites=sites, method="mptq", remap=remap,
                                observer=OBSERVER, points=points)
    correct_shift_bias(plan, consumers_of)
    plan.acts.update(twin)
    plan.meta["sqb_alpha"] = chosen
    plan.meta["opt_m"] = {p: g.shift for p, g in twin.items()}
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
