"""``apq`` (APQ-ViT, Ding et al., ACM MM 2022): blockwise calibration with bottom elimination.

* Blockwise calibration: block by block, each activation grid inside the
  block is chosen (a clipping ratio of its observed range) to minimize the
  error of the *whole block's output* against FP32, not the error of the
  tensor itself.
* Bottom elimination: the block error counts only the larger half of the
  squared output errors, so calibration gives priority to the large errors
  that change the output and ignores the many small ones.
* Matthew-effect preserving softmax quantization: attention probabilities
  follow a power law with a few large values carrying the weight ("the rich
  get richer"); they stay on a logarithmic grid, which keeps that shape at
  every scale, and each block picks the log2 or the finer log-sqrt(2) grid by
  the same block metric.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from quant.methods import register_method
from quant.model import Forward, role
from quant.plan import QuantPlan, Sites, act_grid, baseline_plan, collect, paper_forward

RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
SEARCH_BATCHES = 4  #: calibration batches the blockwise search evaluates (all of them are observed)


def bottom_eliminated_error(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> float:
    """Sum of the larger half of the squared errors (the bottom half eliminated)."""
    err = (out - target).pow(2)
    if mask is not None:
        err = err[mask]
    err = err.reshape(-1)
    drop = err.numel() // 2
    if drop == 0:
        return float(err.sum())
    threshold = err.kthvalue(drop).values  # O(n) selection, not a sort
    above = err[err > threshold]
    return float(above.sum() + (err.numel() - drop - above.numel()) * threshold)


class _Replay:
    """Hooks ``fwd`` so that a block run replays what its hooks (linears and grids) returned before the point a
    search varies: after one full run per batch (``vary(point)``, then the runs with ``batch(j)``), every
    hook call ahead of the point's grid gives back its recorded output, since nothing the search changes
    reaches it; the block is computed again from that grid on. The same values as a plain run, bit for bit."""

    def __init__(self, fwd: Forward):
        self.tapes: dict[int, list] = {}
        self.tape, self.calls, self.point, self.stop, self.replaying = [], 0, None, None, False
        act, linear = fwd.act, fwd.linear
        fwd.act = lambda name, x: self._hook(("act", name), lambda: act(name, x))
        fwd.linear = lambda x, lin, name: self._hook(("linear", name), lambda: linear(x, lin, name))

    def vary(self, point: str) -> None:
        self.tapes, self.point, self.stop, self.replaying = {}, point, None, False

    def batch(self, j: int) -> None:
        self.tape, self.calls = self.tapes.setdefault(j, []), 0

    def recorded(self) -> None:
        """Every batch has run once: replay from now on."""
        self.replaying = self.stop is not None

    def _hook(self, key, compute):
        i, self.calls = self.calls, self.calls + 1
        if self.replaying and i < self.stop:
            return self.tape[i]
        if key == ("act", self.point):
            self.stop = i
        out = compute()
        if not self.replaying and (self.stop is None or i < self.stop):
            self.tape.append(out)
        return out


@register_method("apq")
def apq(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None) -> QuantPlan:
    sites = sites or Sites()
    observers = collect(spec, batches, progress=progress, desc="calibrate (apq)")
    plan = baseline_plan(spec, observers, wbits, abits, method="apq", sites=sites)
    fp, fq = Forward(spec), paper_forward(plan)  # fq reads plan.acts at call time
    replay = _Replay(fq)
    with torch.no_grad():
        spread = batches[:: max(1, len(batches) // SEARCH_BATCHES)][:SEARCH_BATCHES]  # batches may be length-sorted
        xs = [fp.embed(inputs) for inputs, _ in spread]
        for i in tqdm(range(len(spec.blocks)), desc="blockwise (apq)", disable=not progress, leave=False):
            pre = f"blocks.{i}."
            targets = [fp.block(i, x, m) for x, m in xs]

            def block_error() -> float:
                err = 0
                for j, ((x, m), t) in enumerate(zip(xs, targets)):
                    replay.batch(j)
                    err += bottom_eliminated_error(fq.block(i, x, m), t, m)
                replay.recorded()
                return err

            for point in [p for p in plan.acts if p.startswith(pre) and role(p) in ("act", "qkv")]:
                replay.vary(point)
                obs = observers[point]
                full = (obs.min, obs.max)
                best, best_err = plan.acts[point], float("inf")
                for r in RATIOS:
                    obs.min, obs.max = full[0] * r, full[1] * r
                    plan.acts[point] = act_grid(point, obs, sites.a(point, abits))
                    err = block_error()
                    if err < best_err:
                        best, best_err = plan.acts[point], err
                obs.min, obs.max = full
                plan.acts[point] = best
            errs = {}
            replay.vary(pre + "probs")
            for base in (False, True):
                plan.softmax_sqrt2[pre] = base
                errs[base] = block_error()
            plan.softmax_sqrt2[pre] = errs[True] < errs[False]
            xs = [(t, m) for t, (_, m) in zip(targets, xs)]
    return plan
