"""``aocq`` (AOCQ, seed): channel balancing, then block reconstruction whose loss carries the outlier errors.

* Channel balancing: equivalent transforms where the grids are per tensor. (On the post-LayerNorm and
  post-GELU activations RepQ's per-channel grids are used, and those are invariant to any per-channel
  rescaling: a balancing there would change nothing.) In every block:

  - Q against K: query channel c times ``b_c`` and key channel c divided by it (their weight rows and
    biases), ``b_c = sqrt(K_c / Q_c)`` from the calibration ranges, so ``q . k`` is unchanged and both
    channels end with the range ``sqrt(Q_c K_c)``: the symmetric per-tensor grids of the two operands of
    Q.K^T waste fewer codes on a few wide channels.
  - V against the output projection: value channel c divided by ``s_c`` (rows of W_v, b_v) and the
    projection's input column c multiplied by it; attention is linear in V, so the attention output's
    channel c is divided by ``s_c`` too. ``s_c = A_c ** BALANCE / W_c ** (1 - BALANCE)`` (A_c the attention
    output's range, W_c the column's largest weight), normalized to geometric mean 1: the outlier channels
    of the attention output move partly into the projection's weights.

  The observers are collected again after the transform; then RepQ's plan (``quant.methods.repq``).
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
from quant.methods.repq import reparameterized_plan
from quant.plan import QuantPlan, Sites, collect
from quant.reconstruct import Schedule, reconstruct

BALANCE = 0.5  #: how much of an attention-output channel's range moves into the projection (SmoothQuant's alpha)
OUTLIER = 1.0
SCHEDULE = Schedule(iters=100, lr_round=3e-2, lr_scale=5e-4, outlier=OUTLIER)


def _range(obs) -> torch.Tensor:
    return torch.maximum(obs.ch_max.abs(), obs.ch_min.abs()).clamp_min(1e-8)


def balance(spec, observers, strength: float = BALANCE) -> dict[str, torch.Tensor]:
    """Balance every block of ``spec`` in place (Q against K, V against the projection) from the observed
    ranges; returns the factors by block prefix (``"blocks.0.qk"``, ``"blocks.0.vo"``)."""
    factors = {}
    for i, blk in enumerate(spec.blocks):
        pre = f"blocks.{i}."
        b = (_range(observers[pre + "k"]) / _range(observers[pre + "q"])).sqrt()
        blk.q.w, blk.q.b = blk.q.w * b[:, None], blk.q.b * b
        blk.k.w, blk.k.b = blk.k.w / b[:, None], blk.k.b / b
        s = _range(observers[pre + "attn"]).pow(strength) / blk.proj.w.abs().amax(0).clamp_min(1e-8).pow(1 - strength)
        s = s / s.log().mean().exp()
        blk.v.w, blk.v.b = blk.v.w / s[:, None], blk.v.b / s
        blk.proj.w = blk.proj.w * s[None, :]
        factors[pre + "qk"], factors[pre + "vo"] = b, s
    return factors


@register_method("aocq")
def aocq(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    balance(spec, collect(spec, batches, progress=progress, desc="calibrate (aocq)"))
    observers = collect(spec, batches, progress=progress, desc="calibrate (aocq, balanced)")
    plan = reparameterized_plan(spec, observers, wbits, abits, sites=sites, method="aocq")
    return reconstruct(plan, batches, SCHEDULE, progress=progress, desc="reconstruct (aocq)")
