"""``aocq`` (AOCQ, seed): channel balancing, then block reconstruction whose loss carries the outlier errors.

* Channel balancing: an equivalent transform on every post-LayerNorm and post-GELU activation. Input
  channel c of the consumers is multiplied by ``b_c`` and the tensor divided by it, with
  ``b_c = (g / m_c) ** BALANCE`` where ``m_c`` is the largest ``|W[:, c]|`` over the consumers and ``g``
  their geometric mean: the weight columns' ranges are drawn together, so per-output-channel weight
  grids waste fewer codes on a few columns. The activation side is RepQ's per-channel grid, folded
  into one per-tensor grid (``quant.methods.repq``); a per-channel grid is invariant to the balancing,
  so only the weights see it and the program keeps RepQ's operators (the requantizer's per-channel
  multipliers and zero points on BERT, LayerNorm's affine on ViT).
* Weight optimization: block by block, the rounding of every weight is learned against the FP32 block
  output (``quant.reconstruct``, AdaRound-style), the inputs those of the blocks already reconstructed.
* Outlier errors in the weight loss (the detail the paper leaves to the implementation, chosen here):
  each output channel's squared error weighs ``rms_c ** OUTLIER`` (its FP32 root mean square over the
  calibration tokens, mean weight 1), so the outlier channels that carry the residual stream of BERT
  cost more when they are wrong.
* The extra stage for activation step sizes: the same reconstruction learns the scale of every grid
  the method chooses (LSQ), at a learning rate well below the rounding's (a larger one lowered minilm).
"""

from __future__ import annotations

import torch

from quant.methods import register_method
from quant.methods.repq import post_gelu_points, post_ln_points, reparameterized_plan
from quant.plan import QuantPlan, Sites, collect, linears
from quant.reconstruct import Schedule, reconstruct

BALANCE = 0.5  #: how far the weight columns' ranges are equalized (0: not at all, 1: fully)
OUTLIER = 1.0
SCHEDULE = Schedule(iters=100, lr_round=3e-2, lr_scale=5e-4, outlier=OUTLIER)


def balance_factors(spec, consumers: list[str], strength: float = BALANCE) -> torch.Tensor:
    """Per input channel of ``consumers``: ``(g / m_c) ** strength``, m_c the column's largest magnitude."""
    lin = linears(spec)
    m = torch.stack([lin[n].w.abs().amax(dim=0) for n in consumers]).amax(dim=0).clamp_min(1e-8)
    return (m.log().mean().exp() / m).pow(strength)


@register_method("aocq")
def aocq(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    observers = collect(spec, batches, progress=progress, desc="calibrate (aocq)")
    balance = {point: balance_factors(spec, consumers)
               for point, consumers in {**post_ln_points(spec), **post_gelu_points(spec)}.items()}
    plan = reparameterized_plan(spec, observers, wbits, abits, sites=sites, method="aocq", balance=balance)
    return reconstruct(plan, batches, SCHEDULE, progress=progress, desc="reconstruct (aocq)")
