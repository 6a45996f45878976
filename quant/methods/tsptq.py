"""``tsptq`` (TSPTQ-ViT, seed): two scales a power of two apart where one grid fits badly.

* O-2SF, outlier-aware two scales at every post-LayerNorm point (the inputs of Q/K/V, fc1 and the head):
  the channels whose calibrated range the fine grid cannot hold take a coarse scale ``2**k`` times the fine
  one, every other channel the fine scale. In the program that is a channel map ``x / r + delta`` with
  ``r_c`` in ``{1, 2**k}`` (so the two grids align by a shift) and ``delta`` the channel's zero point in
  whole grid steps inside the ``bits``-wide range (``quant.methods.mptq.place``), folded into the consumers'
  weights (``W diag(r)``) and LayerNorm's gamma and beta (ViT) or, on BERT, where the LayerNorm output is
  also the residual, carried by the requantizer narrowing the int16 residual for the linears as per-channel
  multipliers (two values, a power of two apart) and zero points. The fine range is searched (halving steps
  of ``2**(1/2)`` from the widest channel's) for the least squared error of the consumers' quantized
  outputs; ``k`` is the least that holds the widest channel. The zero points' bias term sits on the
  quantized weights (``quant.methods.mptq.correct_shift_bias``).
* V-2SF, value-aware two scales after GELU (fc2's input): a ``b``-bit code, half of it a fine grid from the
  least value up, half a coarse grid ``2**k`` fine steps apart above it (``quant.quantizers.TwoScale``,
  scale and ``k`` of least squared error on the calibration sample). The GELU unit's table writes the
  decoded level, an integer on the fine grid at most ``2 * b`` bits wide, which fc2 streams through the MAC
  array in digit passes where it exceeds the array's port (on edge-int4 at W4A4: 6-8 bits, two passes for
  fc2). The paper keeps the code ``b`` bits wide in memory and decodes at the multiplier; this accelerator
  has no such decoder, so the decoded width is what it stores and streams, and the cost model prices that.
* Post-softmax values keep the accelerator's log2 path (log-sqrt(2) codes, shifts in P.V, as ``repq``): a
  value-aware uniform code there needs a uniform P.V path the softmax unit does not have. Q, K, V and the
  attention output take the range of least squared error; weights per channel with a searched clip.
"""

from __future__ import annotations

import math

import torch

from quant.methods import register_method
from quant.methods.mptq import consumer_error, correct_shift_bias, place
from quant.methods.repq import fold_map, post_gelu_points, post_ln_points, reparameterized_plan
from quant.plan import QuantPlan, Sites, collect, linears
from quant.quantizers import QParams, two_scale_grid

SEARCH_STEPS = 17  #: fine ranges tried per point: the widest channel's, then halving in steps of 2**(1/2)
OBSERVER = "mse"  #: the range of every other chosen point (Q, K, V, the attention output)


def outlier_ratios(lo: torch.Tensor, hi: torch.Tensor, fine: float) -> torch.Tensor:
    """Each channel's scale ratio: 1 where its range (widened to include zero) fits ``fine``, else the least
    power of two ``2**k`` that holds the widest channel."""
    span = hi.clamp_min(0) - lo.clamp_max(0)
    k = max(0, math.ceil(math.log2(float(span.max()) / fine - 1e-9)))
    return torch.where(span > fine, torch.full_like(span, 2.0 ** k), torch.ones_like(span))


def two_scales(spec, point: str, consumers: list[str], obs, bits: int, *,
               wbits: list[int]) -> tuple[QParams, torch.Tensor, torch.Tensor]:
    """O-2SF at ``point``: the fine range of least consumer output error, the channels' ratios and zero
    points folded into the consumers. Returns the per-tensor grid and the channel map (r, delta)."""
    weights = [linears(spec)[name].w for name in consumers]
    widest = float((obs.ch_max.clamp_min(0) - obs.ch_min.clamp_max(0)).max().clamp_min(1e-8))
    best, best_err = None, float("inf")
    for j in range(SEARCH_STEPS):
        r = outlier_ratios(obs.ch_min, obs.ch_max, widest * 2.0 ** (-j / 2))
        grid, delta = place(obs.ch_min, obs.ch_max, r, bits)
        err = consumer_error(obs.rows, r, delta, grid, weights, wbits)
        if err < best_err:
            best, best_err = (grid, r, delta), err
    grid, r, delta = best
    fold_map(spec, consumers, r, delta)
    return grid, r, delta


@register_method("tsptq")
def tsptq(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    sites = sites or Sites()
    observers = collect(spec, batches, progress=progress, desc="calibrate (tsptq)")
    consumers_of = post_ln_points(spec)

    def remap(spec, point, consumers, obs, bits):
        return two_scales(spec, point, consumers, obs, bits, wbits=[sites.w(n, wbits) for n in consumers])

    plan = reparameterized_plan(spec, observers, wbits, abits, sites=sites, method="tsptq", remap=remap,
                                observer=OBSERVER, points=consumers_of)
    correct_shift_bias(plan, consumers_of)
    for point in post_gelu_points(spec):
        plan.acts[point] = two_scale_grid(observers[point].sample, sites.a(point, abits))
    plan.meta["o2sf_outliers"] = {p: int((r > 1).sum()) for p, (r, _) in plan.channel_maps.items()}
    plan.meta["v2sf_shift"] = {p: plan.acts[p].shift for p in post_gelu_points(spec)}
    return plan
