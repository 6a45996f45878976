"""``apq`` for CNNs: APQ-ViT's blockwise calibration with bottom elimination, on a convolution graph.

What of the transformer methods applies to a CNN: the calibration of each activation grid against the
error of a whole block's output (``quant.methods.apq``), which needs no LayerNorm, softmax or GELU. Its
Matthew-effect softmax grid has nothing to act on here. Per block (the steps one name prefix groups:
an MBConv block ``blocks.3.1``, a residual block ``layer2.0``, the stem, the head):

* the block runs on the FP32 feature maps it reads, put on their grids, its weights on theirs. Fed
  instead what the quantized blocks before it give, the search shrinks: against an FP32 target it
  cannot reach, clipping everything lowers the squared error, and on efficientnet-lite0 at W4A4 most
  ratios fell to the smallest tried, the logit cosine to FP32 from 0.20 (min/max) to 0.08 (8 crops,
  20 evaluated; cnn-digits gained with either input: 98.15 and 97.59 % integer top-1 at W4A4);
* each of its points in turn (a convolution's output after its activation, a residual sum) takes the
  clipping ratio of its observed range, from :data:`RATIOS`, whose grid gives the least *bottom-eliminated*
  error of the block's output against the FP32 block on FP32 inputs: the mean of the larger half of the
  squared errors, so that the many small errors do not outvote the few large ones that move the output;
* the grids are those of the baseline otherwise (unsigned ``[0, r max]`` after a ReLU, symmetric
  ``r max|x|`` else; the image and the logits keep theirs), so the lowering is the baseline's.

The search sees the calibration images only; it changes grids, never the graph.
"""

from __future__ import annotations

from typing import Iterable

import torch
from tqdm import tqdm

from quant.cnn import CNN, METHODS, CnnPlan, Node, _unsigned, act_grid, collect, grids, run_nodes
from quant.quantizers import QParams, fake_weight

#: clipping ratios of a point's observed range that the search tries
RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def block_of(name: str) -> str:
    """A step's block: its name up to its last index (``blocks.3.1.dw`` -> ``blocks.3.1``, ``layer2.0.conv1``
    -> ``layer2.0``), or its first part (``stem``)."""
    parts = name.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[:digits[-1] + 1]) if digits else parts[0]


def _blocks(cnn: CNN) -> list[list[Node]]:
    """The steps grouped by block, in order: a max pool joins the block before it (it keeps its input's
    grid), the pooling and the classifier close the last one."""
    out: list[list[Node]] = []
    key = None
    for n in cnn.nodes:
        k = "head" if n.step in ("pool", "fc") else key if n.step == "maxpool" else block_of(n.name)
        if k != key:
            out.append([])
            key = k
        out[-1].append(n)
    return out


def bottom_eliminated(err: torch.Tensor) -> float:
    """The mean of the larger half of the squared errors ``err``."""
    sq = err.double().square().flatten()
    return float(sq.topk(max(1, sq.numel() // 2)).values.mean())


def apq(cnn: CNN, batches: Iterable, wbits: int, abits: int, *, progress: bool = True,
        ratios: tuple[float, ...] = RATIOS) -> CnnPlan:
    batches = list(batches)
    observers = collect(cnn, batches, progress)
    plan = grids(cnn, observers, wbits, abits, method="apq")
    unsigned = _unsigned(cnn)
    fakes = {name: fake_weight(w.reshape(w.shape[0], -1), plan.weight_scales[name], wbits).reshape(w.shape)
             for name, w in plan.weights().items()}

    def weight(name, w):
        return fakes[name]

    def grid(point: str, ratio: float) -> QParams:
        obs = observers[point]
        return act_grid(obs.min * ratio, obs.max * ratio, abits, point in unsigned)

    def quantized(name, t):
        return plan.acts[name].fake(t) if name in plan.acts else t

    images = torch.cat([x for x, _ in batches])
    readers = {}
    for i, n in enumerate(cnn.nodes):
        for t in n.inputs:
            readers[t] = i
    with torch.no_grad():
        fp = {"input": images}
        searched = {}
        blocks = _blocks(cnn)
        for block in tqdm(blocks, desc=f"apq {cnn.name}", disable=not progress, leave=False):
            last = block[-1].name
            inputs = {t: quantized(t, v) for t, v in fp.items()}  # the FP32 feature maps on their grids
            fp = run_nodes(block, fp, lambda name, t: t)
            want = fp[last]
            for n in block:
                if n.step not in ("conv", "add"):
                    continue
                losses = {}
                for r in ratios:
                    plan.acts[n.name] = grid(n.name, r)
                    losses[r] = bottom_eliminated(run_nodes(block, inputs, quantized, weight)[last] - want)
                best = min(losses, key=losses.get)
                plan.acts[n.name], searched[n.name] = grid(n.name, best), best
                for m in block:  # a max pool keeps its input's grid
                    if m.step == "maxpool" and m.inputs[0] == n.name:
                        plan.acts[m.name] = plan.acts[n.name]
            end = cnn.nodes.index(block[-1])
            for t in [t for t in fp if readers.get(t, -1) <= end]:  # what no later step reads
                del fp[t]
    plan.meta["apq_ratios"] = {k: float(v) for k, v in searched.items()}
    return plan


METHODS["apq"] = apq
