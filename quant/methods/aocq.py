"""``aocq`` (AOCQ, seed): channel balancing, then block reconstruction whose loss carries the outlier errors.

* Channel balancing: an equivalent transform where the grids are per tensor, the two operands of
  Q.K^T: query channel c times ``b_c`` and key channel c divided by it (their weight rows and biases),
  ``b_c = sqrt(K_c / Q_c)`` from the calibration ranges, so ``q . k`` is unchanged and both channels end
  with the range ``sqrt(Q_c K_c)``; the symmetric per-tensor grids of Q and K waste fewer codes on a few
  wide channels. The observers are collected again after it; then RepQ's plan (``quant.methods.repq``).
  Not balanced: the post-LayerNorm and post-GELU activations, where RepQ's per-channel grids are
  invariant to any per-channel rescaling (a balancing there changes nothing), and V against the output
  projection (SmoothQuant's migration with alpha 0.5, exact since attention is linear in V), which
  lowered minilm W4A4 (first 200 sentences: 0.856 alone, 0.874 with Q/K, against 0.879 for Q/K alone).
* Weight optimization: block by block, the rounding of every weight is learned against the FP32 block
  output (``quant.reconstruct``, AdaRound-style), the inputs those of the blocks already reconstructed.
* Outlier errors in the weight loss (the detail the paper leaves to the implementation, chosen here):
  each output channel's squared error weighs ``rms_c ** OUTLIER`` (its FP32 root mean square over the
  calibration tokens, mean weight 1), so the outlier channels that carry the residual stream of BERT
  cost more when they are wrong.
* The extra stage for activation step sizes: the same reconstruction learns the scale of every grid
  the method chooses (LSQ), at a learning rate well below the rounding's (a larger one lowered minilm),
  starting from the range of least squared error on the calibration sample at the points RepQ does not
  reparameterize (Q, K, V, the attention output) rather than their min/max: minilm W4A4, first 200
  sentences, 0.8799 -> 0.9113.
"""

from __future__ import annotations

import torch

from quant.methods import register_method
from quant.methods.repq import reparameterized_plan
from quant.plan import QuantPlan, Sites, collect
from quant.reconstruct import Schedule, reconstruct

OUTLIER = 1.0
SCHEDULE = Schedule(iters=50, lr_round=3e-2, lr_scale=5e-4, outlier=OUTLIER)


def _range(obs) -> torch.Tensor:
    return torch.maximum(obs.ch_max.abs(), obs.ch_min.abs()).clamp_min(1e-8)


def balance(spec, observers) -> dict[str, torch.Tensor]:
    """Balance Q against K in every block of ``spec`` in place, from the observed ranges; returns the factors
    by block prefix."""
    factors = {}
    for i, blk in enumerate(spec.blocks):
        pre = f"blocks.{i}."
        b = (_range(observers[pre + "k"]) / _range(observers[pre + "q"])).sqrt()
        blk.q.w, blk.q.b = blk.q.w * b[:, None], blk.q.b * b
        blk.k.w, blk.k.b = blk.k.w / b[:, None], blk.k.b / b
        factors[pre] = b
    return factors


@register_method("aocq")
def aocq(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    balance(spec, collect(spec, batches, progress=progress, desc="calibrate (aocq)"))
    observers = collect(spec, batches, progress=progress, desc="calibrate (aocq, balanced)")
    plan = reparameterized_plan(spec, observers, wbits, abits, sites=sites, method="aocq", observer="mse")
    return reconstruct(plan, batches, SCHEDULE, progress=progress, desc="reconstruct (aocq)")
