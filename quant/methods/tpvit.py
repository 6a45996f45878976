"""``tpvit`` (TP-ViT, seed): a truncated uniform-log2 quantizer for the attention probabilities, then block
reconstruction whose weights decline in width progressively, with transition weights.

* **Truncated uniform-log2 quantizer** (``sim.intops.softmax_tulq``, the softmax unit's ``tulq`` mode). A log2
  grid spends its codes on the many small probabilities and rounds the few large ones, the outliers that
  carry most of an attention row, to 1, 1/2 or 1/4; a uniform grid does the opposite. Above a knee
  ``2**-knee`` the probabilities are rounded uniformly to steps of ``2**-step_bits``, below it to powers of
  two, and below ``2**-grid_bits`` they are truncated to 0. The paper's exact split is not reachable here;
  the choices made: the knee and the uniform step are powers of two, so that both regions are levels on
  one ``2**-grid_bits`` integer grid (the softmax unit writes the level, and P.V runs as an ordinary product,
  its probabilities streamed in digit passes: P.V costs ``ceil((grid_bits + 2) / act_bits)`` passes
  instead of the log2 path's one); the quantizer has as many levels as the log2 path has codes
  (``2**code_bits``, :func:`sim.intops.tulq_levels`), and per block the ``(knee, step_bits)`` whose levels
  fit with the deepest truncation they leave is chosen by the error it gives the attention output ``P V``
  on the calibration sample (FP32 P and V), log2's error printed beside it.
* **Progressive bit-decline reconstruction** (``quant.reconstruct``, ``Schedule.decline``): each block's
  weight rounding is learned first at 8 bits, then 6, then the target width, moving from one width to the
  next through a transition weight that blends the two widths' weights linearly (1 -> 0) over its share of
  the iterations; the rest run at the target width alone. The grids otherwise are RepQ's (per-channel
  post-LayerNorm scales reparameterized into the LayerNorm affine) with least-squared-error ranges.
"""

from __future__ import annotations

import dataclasses

import torch

from quant.methods import register_method
from quant.methods.repq import reparameterized_plan
from quant.model import Forward
from quant.plan import QuantPlan, Sites, collect
from quant.quantizers import fake_log2, fake_tulq
from quant.reconstruct import Schedule, reconstruct
from sim import intops, widths

#: the widths the weights decline through before the target (those above it)
DECLINE = (8, 6)
SCHEDULE = Schedule(iters=50, lr_round=3e-2, decline_share=0.4)


def candidates(code_bits: int) -> list[tuple[int, int, int, bool]]:
    """``(knee, step_bits, grid_bits, sqrt2)`` with a uniform region (``knee >= 1``) and at most ``2**code_bits``
    levels, each with the deepest grid they leave room for (within ``MAX_TULQ_GRID_BITS``)."""
    out = []
    for sqrt2 in (False, True):
        for knee in range(1, 4):
            for step in range(knee, 6):
                grid = step
                while grid < widths.MAX_TULQ_GRID_BITS and \
                        intops.tulq_levels(knee, step, grid + 1, sqrt2) <= 1 << code_bits:
                    grid += 1
                if intops.tulq_levels(knee, step, grid, sqrt2) <= 1 << code_bits:
                    out.append((knee, step, grid, sqrt2))
    return out


def choose_levels(spec, batches, code_bits: int) -> tuple[dict, dict]:
    """Per block prefix, the candidate of least squared error of ``P V`` over the calibration batches where it
    beats the log2 path's base-sqrt(2) codes (RepQ's), and every block's errors: the best candidate's, the
    log2 codes' and the sqrt(2) codes'. A Swin model keeps its codes everywhere: its window attention
    (``quant.swin``) is lowered with log2 codes only."""
    if spec.family == "swin":
        return {}, {}
    cands = candidates(code_bits)
    err: dict[str, torch.Tensor] = {}
    heads = spec.heads
    state: dict = {}

    def hook(name: str, x: torch.Tensor) -> torch.Tensor:
        if name.endswith(".v") and name.startswith("blocks."):
            b, t, d = x.shape
            state["v"] = x.view(b, t, heads, d // heads).transpose(1, 2).double()
        elif name.endswith("probs"):
            pre = name[: -len("probs")]
            p, v = x.double(), state.pop("v")
            out = p @ v
            rows = [fake_tulq(p, *c) for c in cands] + [fake_log2(p, code_bits, False), fake_log2(p, code_bits, True)]
            e = torch.stack([((q @ v - out) ** 2).sum() for q in rows])
            err[pre] = err.get(pre, 0) + e
        return x

    fwd = Forward(spec, hook)
    with torch.no_grad():
        for inputs, _ in batches:
            fwd(inputs)
    chosen, report = {}, {}
    for pre, e in err.items():
        best = int(torch.argmin(e[: len(cands)]))
        report[pre] = {"candidate": list(cands[best]), "tulq": float(e[best]), "log2": float(e[-2]),
                       "log_sqrt2": float(e[-1])}
        if e[best] < e[-1]:
            chosen[pre] = cands[best]
    return chosen, report


@register_method("tpvit")
def tpvit(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    observers = collect(spec, batches, progress=progress, desc="calibrate (tpvit)")
    plan = reparameterized_plan(spec, observers, wbits, abits, sites=sites, method="tpvit", observer="mse")
    plan.softmax_tulq, plan.meta["tulq"] = choose_levels(spec, batches, plan.code_bits)
    schedule = dataclasses.replace(SCHEDULE, decline=tuple(b for b in DECLINE if b > wbits))
    return reconstruct(plan, batches, schedule, progress=progress, desc="reconstruct (tpvit)")
