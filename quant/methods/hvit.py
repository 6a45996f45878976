"""``hvit`` (H-ViT): power-of-two scaling factors only, so every requantizer is a shifter.

* Weights symmetric and layer-wise (one scale per tensor), activations
  symmetric per tensor, every scale a power of two: each requantization
  multiplier s_in * s_w / s_out is an exact power of two: the program's
  requant tables hold M = 1 (a right shift) everywhere, except where 4-bit
  Q.K scores are coarser than the softmax unit's input grid and the shift
  goes left (M = 2**k, no right shift). Linear outputs get grids no finer
  than their accumulators', so they never need a left shift.
* LayerNorm's inter-channel variation, without hyper-parameters: each
  channel c of a post-LayerNorm activation gets a power-of-two factor
  2**-alpha_c, alpha_c = max(0, round(log2(range_c / median range))), so every
  channel fits the range of a typical one; the consumers' weight columns take
  2**alpha_c back. Powers of two keep the rewrite exact in shift arithmetic.
* The attention scale is rewritten (an exact equivalent: Q's weights times k,
  the scale divided by k) so that scale * log2(e) is a power of two and the
  requant into the softmax unit's log2 domain is a shift too.
"""

from __future__ import annotations

import math

import torch

from quant.methods import register_method
from quant.methods.repq import post_ln_points
from quant.plan import QuantPlan, Sites, baseline_plan, collect, linear_edges, linears
from quant.quantizers import QParams, weight_scales


def pow2_ceil(x: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.ceil(torch.log2(x)))


def channel_factors(obs) -> torch.Tensor:
    """alpha_c: how many halvings bring channel c's range down to the median channel's."""
    rng = torch.maximum(obs.ch_max.abs(), obs.ch_min.abs()).clamp_min(1e-8)
    return torch.clamp(torch.round(torch.log2(rng / rng.median())), min=0)


def pow2_attention(spec) -> None:
    """Make every block's attn_scale * log2(e) a power of two, moving the difference into W_q and b_q."""
    log2e = math.log2(math.e)
    for blk in spec.blocks:
        target = 2.0 ** round(math.log2(blk.attn_scale * log2e)) / log2e
        k = blk.attn_scale / target
        blk.q.w = blk.q.w * k
        blk.q.b = blk.q.b * k
        blk.attn_scale = target


@register_method("hvit")
def hvit(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    sites = sites or Sites()
    pow2_attention(spec)
    observers = collect(spec, batches, progress=progress, desc="calibrate (hvit)")
    lin = linears(spec)
    maps = {}
    for point, consumers in post_ln_points(spec).items():
        alpha = channel_factors(observers[point])
        ratio = torch.exp2(alpha)
        for name in consumers:
            lin[name].w = lin[name].w * ratio[None, :]
        maps[point] = (ratio, torch.zeros_like(ratio))
    for point, (ratio, _) in maps.items():  # the tensor now carries x / 2**alpha
        obs = observers[point]
        obs.min = float((obs.ch_min / ratio).min())
        obs.max = float((obs.ch_max / ratio).max())
    plan = baseline_plan(spec, observers, wbits, abits, method="hvit", pow2=True, symmetric=True, sites=sites)
    plan.channel_maps = maps
    for name, l in lin.items():  # layer-wise: one power-of-two scale per weight tensor
        s = pow2_ceil(weight_scales(l.w, sites.w(name, wbits)).max())
        plan.weight_scales[name] = s.expand(l.w.shape[0]).clone()
    coarsen_residual_grids(plan)
    return plan


def coarsen_residual_grids(plan: QuantPlan) -> None:
    """A right-shift-only requantizer cannot refine: every linear's output grid is made no finer than
    its accumulator's, so the multiplier s_x * s_w / s_out stays <= 1 (it matters for the int16 residual)."""
    for linear, src, dst in linear_edges(plan.spec):
        acc = plan.acts[src].scale * float(plan.weight_scales[linear].max())
        out = plan.acts[dst]
        if acc > out.scale:
            plan.acts[dst] = QParams(acc, out.zero_point, out.bits, out.signed)
