"""``repq`` (RepQ-ViT, Li et al., ICCV 2023): scale reparameterization.

* Post-LayerNorm activations are calibrated per channel (scale s_c, integer
  zero point z_c), then reparameterized to one per-tensor grid
  (s = mean s_c, z = round(mean z_c)): the tensor carries x_c / r_c + delta_c
  with r_c = s_c / s and delta_c = s (z_c - z), and the consumers' weights
  absorb it, W' = W diag(r), b' = b - W' delta. Because z and z_c are
  integers, per-tensor quantization of the new tensor *is* per-channel
  quantization of the old one. Where the LayerNorm output only feeds linears
  (ViT) the map folds into LayerNorm's gamma and beta; where it is also the
  residual stream (BERT, post-LN) the requantizer that narrows the residual
  for the linears realizes it with per-channel multipliers and zero points.
* Post-softmax values use a log-sqrt(2) grid; for inference the codes are
  half-step log2 shifts (one constant shift-add for odd codes).
* Weights per output channel with a searched clipping ratio.
* Beyond the paper: post-GELU activations (the FFN's second linear input,
  with a few channels 10-20x wider than the rest in BERT) get the same
  per-channel reparameterization into fc2. GELU is not linear, so the map
  cannot go into the GELU ROM; the ROM writes a 16-bit per-tensor grid and
  the requantizer narrows it per channel (multipliers and zero points).
"""

from __future__ import annotations

import torch

from quant.methods import register_method
from quant.plan import QuantPlan, Sites, baseline_plan, collect
from quant.quantizers import QParams, search_weight_clip, weight_scales
from sim import intops, widths

GELU_ROM_BITS = widths.GELU_OUT_BITS  #: the GELU ROM's output width when a per-channel requant follows it


def post_gelu_points(spec) -> dict[str, list[str]]:
    """Post-GELU activation points and their consumer (fc2)."""
    return {f"blocks.{i}.gelu": [f"blocks.{i}.fc2"] for i in range(len(spec.blocks))}


def post_ln_points(spec) -> dict[str, list[str]]:
    """Post-LayerNorm activation points and the linears that consume each."""
    points = {}
    for i, blk in enumerate(spec.blocks):
        pre = f"blocks.{i}."
        if getattr(blk, "merge", None) is not None:  # Swin's patch merging: its LayerNorm feeds the reduction
            points[pre + "merge_ln"] = [pre + "merge"]
        qkv = [pre + "q", pre + "k", pre + "v"]
        points[pre + ("in" if spec.family == "bert" else "ln1")] = qkv
        points[pre + "ln2"] = [pre + "fc1"]
    if spec.family != "bert":  # ViT's class token, Swin's mean over the tokens
        points["norm"] = ["head"]
    return points


def channel_grid(obs, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel asymmetric scales and integer zero points from the observed channel ranges."""
    qmin, qmax = intops.int_range(bits)
    lo = torch.clamp(obs.ch_min, max=0.0)
    hi = torch.clamp(obs.ch_max, min=0.0)
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=1e-8)
    zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    return scale, zp


def reparameterize(spec, point: str, consumers: list[str], obs, bits: int) -> tuple[QParams, torch.Tensor, torch.Tensor]:
    """Fold the per-channel grid of ``point`` into its consumers; returns the per-tensor grid and the map (r, delta).
    The consumers' input columns end up scaled by the channels' own grid scales whatever they were before, so
    no per-channel rescaling of this tensor ahead of it (a SmoothQuant-style balancing) changes the result."""
    s_c, z_c = channel_grid(obs, bits)
    s = float(s_c.mean())
    z = int(torch.round(z_c.mean()))
    ratio = s_c / s
    delta = s * (z_c - z)
    fold_map(spec, consumers, ratio, delta)
    return QParams(s, z, bits), ratio, delta


def fold_map(spec, consumers: list[str], ratio: torch.Tensor, delta: torch.Tensor) -> None:
    """The consumers of a tensor that now carries ``x / ratio + delta``: ``W' = W diag(ratio)``,
    ``b' = b - W' delta``, so their outputs are unchanged."""
    from quant.plan import linears

    lin = linears(spec)
    for name in consumers:
        w = lin[name].w * ratio[None, :]
        lin[name].b = lin[name].b - w @ delta
        lin[name].w = w


@register_method("repq")
def repq(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    observers = collect(spec, batches, progress=progress, desc="calibrate (repq)")
    return reparameterized_plan(spec, observers, wbits, abits, sites=sites)


def reparameterized_plan(spec, observers, wbits: int, abits: int, *, sites: Sites | None = None,
                         method: str = "repq", remap=reparameterize, observer: str = "minmax",
                         points: dict[str, list[str]] | None = None) -> QuantPlan:
    """RepQ's plan from the observers: post-LayerNorm and post-GELU points reparameterized, log-sqrt(2)
    attention codes, clipped per-channel weights. ``remap(spec, point, consumers, obs, bits)`` folds a
    point's channel map into its consumers and returns its grid and the map (r, delta): RepQ's by default.
    ``points`` (point -> consumers) are the points remapped (default: every post-LayerNorm and post-GELU
    point). ``observer`` sets the range of every other chosen point (``quant.plan.act_grid``)."""
    sites = sites or Sites()
    grids, maps = {}, {}
    if points is None:
        points = {**post_ln_points(spec), **post_gelu_points(spec)}
    for point, consumers in points.items():
        qp, ratio, delta = remap(spec, point, consumers, observers[point], sites.a(point, abits))
        grids[point], maps[point] = qp, (ratio, delta)
    for point in (p for p in post_gelu_points(spec) if p in maps):  # the GELU ROM's grid, before the requant
        grids[point + ".rom"] = observers[point].minmax(GELU_ROM_BITS, True)  # zero point 0: a requant input
    plan = baseline_plan(spec, observers, wbits, abits, method=method, sites=sites, observer=observer)
    plan.acts.update(grids)
    plan.channel_maps = maps
    plan.sqrt2 = True
    from quant.plan import linears

    for name, lin in linears(spec).items():  # recalibrate the weight quantizers on the rewritten weights
        bits = sites.w(name, wbits)
        plan.weight_scales[name] = weight_scales(lin.w, bits, search_weight_clip(lin.w, bits))
    return plan
