"""``fqvit`` (FQ-ViT, Lin et al., IJCAI 2022): fully quantized LayerNorm inputs and Log-Int-Softmax.

* Power-of-Two Factor (PTF) for LayerNorm inputs: the int16 residual is
  narrowed to an 8-bit LayerNorm input with one per-tensor scale s and, per
  channel c, a factor 2**alpha_c (alpha_c in 0..3) chosen to minimize that
  channel's quantization error; the LayerNorm unit shifts each input left by
  alpha_c before its integer statistics, so inter-channel variation costs no
  multiplier. The LayerNorm unit then reads 8-bit instead of 16-bit inputs.
* Log-Int-Softmax: integer exp and 4-bit log2 codes, attention x V as shifts
  (the softmax unit of the accelerator, sim.intops.softmax_log2).
* Weights per channel, activations per tensor, min/max calibration.
"""

from __future__ import annotations

import torch

from quant.methods import register_method
from quant.plan import QuantPlan, Sites, baseline_plan, collect
from quant.quantizers import QParams, fake_ptf

PTF_BITS = 8
PTF_MAX_ALPHA = 3


def ln_inputs(spec) -> list[str]:
    """The LayerNorms of the model by the name of their output point."""
    names = ["embed_ln"] if spec.emb_norm is not None else []  # BERT's embedding LayerNorm, Swin's patch norm
    for i, blk in enumerate(spec.blocks):
        pre = f"blocks.{i}."
        names += [pre + "merge_ln"] if getattr(blk, "merge", None) is not None else []
        names += [pre + "ln1_out", pre + "ln2_out"] if spec.family == "bert" else [pre + "ln1", pre + "ln2"]
    return names + ([] if spec.family == "bert" else ["norm"])


def ptf_grid(obs, bits: int = PTF_BITS, max_alpha: int = PTF_MAX_ALPHA) -> tuple[QParams, torch.Tensor]:
    """Base grid from the widest channel over 2**max_alpha; each channel's alpha minimizes its error on the sample rows."""
    qmax = (1 << (bits - 1)) - 1
    amax = torch.maximum(obs.ch_max.abs(), obs.ch_min.abs()).clamp_min(1e-8)
    grid = QParams(float(amax.max()) / qmax / 2**max_alpha, 0, bits)
    rows = obs.rows  # [n, C] calibration rows kept by the observer
    best_err = torch.full_like(amax, float("inf"))
    alpha = torch.zeros_like(amax)
    for a in range(max_alpha + 1):
        a_vec = torch.full_like(amax, float(a))
        err = (fake_ptf(rows, grid, a_vec) - rows).pow(2).sum(dim=0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        alpha = torch.where(better, a_vec, alpha)
    return grid, alpha


@register_method("fqvit")
def fqvit(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    observers = collect(spec, batches, progress=progress, desc="calibrate (fqvit)", extra_roles=("ln_in",))
    plan = baseline_plan(spec, observers, wbits, abits, method="fqvit", sites=sites)
    plan.ln_ptf = {name: ptf_grid(observers[name + ".ln_in"]) for name in ln_inputs(spec)}
    return plan
