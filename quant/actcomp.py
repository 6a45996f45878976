"""Activation compression for CNNs: two methods that shrink what the accelerator stores of feature maps.

Both start from the baseline's grids (``quant.cnn.baseline``) and a traffic target: the activations the
graph stores (every point's values at its width: the image at 8 bits, feature maps at ``abits``) shrunk
``ratio`` times. A greedy search spends that budget where a calibration error proxy grows least per bit
saved, and never takes a step that leaves a point's proxy above :data:`MAX_ERROR`, so where the target
costs more than that the method stops short of it (the cost model then says what was reached).

The error proxy of a point is relative and measured where it matters, at its consumers: for a consumer
with weights ``M`` (a convolution's every tap, the classifier behind the global pool; a residual add or
a max pool passes the error on as it is) the error energy ``E||M e||^2`` over the output energy
``E||M x||^2``, summed over the point's consumers (cross-tap correlations of a k x k convolution left out).

``actcomp-mpdr`` (channel groups with their own widths, 0 = dropped): a point's channels are ordered by
importance (their share of the consumers' output energy) and cut into groups of :data:`GROUP` channels
(the vector lanes' width); each group gets a width from {0, 2, 4, 8} up to ``abits`` and each channel a
grid ``2**k`` steps of the point's own (``k`` searched on calibration samples, ``bits + k <= abits``), so
that the consumer reads every channel on one grid: the requantizer rounds a channel onto its grid, the
packer keeps its ``bits`` bits, and what the buffer and DRAM hold is a row of channels at the sum of their
widths (``sim.intops.pack_channels``; ``sim.cycles`` counts those bytes). A dropped channel reads as 0 and
its calibration mean is folded into its consumers' biases (exact for a 1x1 convolution and the pooled
classifier; a k x k convolution's padded border sees the mean where the float model saw 0), so it is
allowed only where every consumer is a convolution or the pool. The search is greedy over all groups of
all points at once: each step lowers the group whose jump to some lower width costs the least proxy per
bit saved. A channel permutation that made each group contiguous would fold exactly into the producer's
rows and the consumers' columns; it is not applied, because the requantizer's per-channel table already
addresses every channel and the stored bytes are the same.

``actcomp-cap`` (a learned projection per point, decompression folded into the consumer): where every
consumer of a convolution's output is a convolution with one group or the pool (so that the consumer's
weights absorb the decoder exactly, padding included: ``W' = W D``), the point is replaced by ``z = P x``
with ``r`` channels: ``P`` [r, C] initialised from the top ``r`` eigenvectors of the uncentered
second-moment matrix of ``x`` (PCA; uncentered keeps the map linear, so the fold is exact), then ``P`` and
``D`` [C, r] tuned by gradient descent on the proxy (a closed form in the second moments: seconds on a
CPU). ``r`` shrinks by :data:`GROUP` channels a step, point by point, where the proxy grows least per byte
saved (PCA's error gives each step's cost). The projection is a 1x1 convolution that the array runs on
its producer's drain (``sim.ops.Project``): ``x`` never reaches the activation buffer whole nor DRAM, only
``z`` does. Points whose consumers cannot absorb the decoder (a depthwise convolution, a residual add, a
max pool) are left alone: a separate decompression pass would store ``x`` again, adding traffic.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from quant.cnn import CNN, METHODS, Conv, Node, PackedGrid, _unsigned, collect, grids
from quant.quantizers import QuantError

GROUP = 16  #: channels per group / per projection step: the accelerator's vector width
DEFAULT_RATIO = 3.0  #: the seeds' claim: about 3x less activation memory traffic
MAX_ERROR = 0.02  #: the largest relative error proxy a step may leave at a point (chosen on cnn-digits: notes in the README)
SAMPLE_ROWS = 4096  #: pixel rows of each point kept for the width search
TUNE_STEPS = 300  #: gradient steps on a projection


# ------------------------------------------------------------------ the graph around a point
def consumers(cnn: CNN) -> dict[str, list[Node]]:
    """Each point's consuming steps."""
    out: dict[str, list[Node]] = {}
    for n in cnn.nodes:
        for i in n.inputs:
            out.setdefault(i, []).append(n)
    return out


def _fc_after(cnn: CNN, pool: Node) -> Node:
    return next(n for n in cnn.nodes if n.step == "fc" and n.inputs == (pool.name,))


def _rows(cnn: CNN, node: Node, channels: int) -> torch.Tensor | None:
    """The weight rows a consumer applies to its input's channels, [rows, C] (a grouped convolution: each
    channel's own filters, zero elsewhere); None for a step that passes values on (add, max pool)."""
    if node.step == "conv":
        w = node.conv.w.double()
        o, cg = w.shape[:2]
        groups = node.conv.groups
        if groups == 1:
            return w.permute(0, 2, 3, 1).reshape(-1, channels)
        full = torch.zeros(o, w.shape[2], w.shape[3], channels, dtype=torch.float64)
        per = o // groups
        for g in range(groups):
            full[g * per:(g + 1) * per, :, :, g * cg:(g + 1) * cg] = w[g * per:(g + 1) * per].permute(0, 2, 3, 1)
        return full.reshape(-1, channels)
    if node.step == "pool":
        return _fc_after(cnn, node).fc[0].double()
    return None


@dataclass
class _Moments:
    """Channel statistics of one point over the calibration images (channels last)."""

    channels: int
    n: int = 0
    total: torch.Tensor | None = None  #: sum of x [C]
    second: torch.Tensor | None = None  #: sum of x x^T [C, C]
    samples: list = field(default_factory=list)

    def add(self, x: torch.Tensor, keep: int, gen: torch.Generator) -> None:
        rows = x.movedim(1, -1).reshape(-1, self.channels).double()
        self.n += rows.shape[0]
        self.total = rows.sum(0) if self.total is None else self.total + rows.sum(0)
        outer = rows.T @ rows
        self.second = outer if self.second is None else self.second + outer
        if keep:
            pick = torch.randperm(rows.shape[0], generator=gen)[:keep]
            self.samples.append(rows[pick])

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.n

    @property
    def sigma(self) -> torch.Tensor:
        return self.second / self.n

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples)


def _gather(cnn: CNN, batches: list, points: list[str], keep_samples: bool, progress: bool):
    """One pass over the calibration images: every point's observer, its values per image, and the moments
    of ``points``."""
    moments = {p: None for p in points}
    sizes: dict[str, int] = {}
    gen = torch.Generator().manual_seed(0)
    keep = math.ceil(SAMPLE_ROWS / max(1, len(batches))) if keep_samples else 0

    def also(name, t):
        sizes[name] = t[0].numel()
        if name in moments:
            if moments[name] is None:
                moments[name] = _Moments(t.shape[1])
            moments[name].add(t.detach(), keep, gen)

    observers = collect(cnn, batches, progress, also)
    return observers, moments, sizes


def _metric(cnn: CNN, users: list[Node], m: _Moments) -> torch.Tensor:
    """``G`` [C, C]: the error proxy of an error ``e`` is ``E e^T G e`` (each consumer's ``M^T M`` over its
    output energy ``tr(M S M^T)``, S the second moments; a pass-through step: identity over ``tr S``)."""
    c = m.channels
    g = torch.zeros(c, c, dtype=torch.float64)
    sigma = m.sigma
    for node in users:
        rows = _rows(cnn, node, c)
        mtm = torch.eye(c, dtype=torch.float64) if rows is None else rows.T @ rows
        g += mtm / max(float(torch.trace(mtm @ sigma)), 1e-30)
    return g


def _budget(sizes: dict[str, int], abits: int, ratio: float) -> tuple[dict[str, int], float, float]:
    """Values per image of every stored point (the logits aside), their bits, and the bits the target allows."""
    if not ratio >= 1:
        raise QuantError(f"activation compression ratio must be at least 1, got {ratio}")
    values = {p: v for p, v in sizes.items() if p != "logits"}
    total = sum(v * (8 if p == "input" else abits) for p, v in values.items())
    return values, total, total / ratio


# ------------------------------------------------------------------ actcomp-mpdr
def widths_for(abits: int) -> list[int]:
    """The widths a group may take: 0 (dropped), 2, 4, 8, up to ``abits`` (always included)."""
    return sorted({b for b in (0, 2, 4, 8) if b <= abits} | {abits})


def _channel_errors(x: torch.Tensor, scale: float, abits: int, signed: bool, mean: torch.Tensor,
                    widths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel and width: the mean squared error on samples ``x`` [S, C] and the best shift ``k``
    (the channel's grid ``scale * 2**k``, ``bits + k <= abits``); width 0: the variance about the mean."""
    c = x.shape[1]
    err = torch.full((len(widths), c), math.inf, dtype=torch.float64)
    shift = torch.zeros((len(widths), c), dtype=torch.int64)
    for wi, b in enumerate(widths):
        if b == 0:
            err[wi] = ((x - mean) ** 2).mean(0)
            continue
        lo, hi = (-(1 << (b - 1)), (1 << (b - 1)) - 1) if signed else (0, (1 << b) - 1)
        for k in range(abits - b + 1):
            step = scale * 2.0 ** k
            e = ((torch.clamp(torch.round(x / step), lo, hi) * step - x) ** 2).mean(0)
            better = e < err[wi]
            err[wi] = torch.where(better, e, err[wi])
            shift[wi] = torch.where(better, torch.full_like(shift[wi], k), shift[wi])
    return err, shift


@dataclass
class _Group:
    point: str
    channels: torch.Tensor  #: channel indices
    err: torch.Tensor  #: proxy at each width [len(widths)]
    level: int  #: index into widths


def mpdr(cnn: CNN, batches, wbits: int, abits: int, *, progress: bool = True, ratio: float = DEFAULT_RATIO):
    """``actcomp-mpdr``: per-group widths (0 = dropped) by a greedy search under a traffic target."""
    batches = list(batches)
    users = consumers(cnn)
    unsigned = _unsigned(cnn)
    eligible = [n.name for n in cnn.nodes if n.step == "conv" or (n.step == "add" and n.act != "none")]
    observers, moments, sizes = _gather(cnn, batches, eligible, True, progress)
    plan = grids(cnn, observers, wbits, abits, "actcomp-mpdr")
    values, bits, target = _budget(sizes, abits, ratio)
    start = bits
    widths = widths_for(abits)
    groups: list[_Group] = []
    shifts: dict[str, torch.Tensor] = {}
    for p in eligible:
        m = moments[p]
        may_drop = all(u.step in ("conv", "pool") for u in users[p])
        ws = widths if may_drop else [b for b in widths if b > 0]
        err, shift = _channel_errors(m.sample(), plan.acts[p].scale, abits, p not in unsigned, m.mean, ws)
        weight = torch.diagonal(_metric(cnn, users[p], m))  # each channel's share of its consumers' error
        err = err * weight
        if not may_drop:  # width 0 out of reach: infinite proxy
            err = torch.cat([torch.full((1, m.channels), math.inf, dtype=torch.float64), err])
            shift = torch.cat([torch.zeros((1, m.channels), dtype=torch.int64), shift])
        importance = weight * torch.diagonal(m.sigma)
        order = torch.argsort(importance, descending=True)
        shifts[p] = shift
        for g0 in range(0, m.channels, GROUP):
            idx = order[g0:g0 + GROUP]
            groups.append(_Group(p, idx, err[:, idx].sum(1), len(widths) - 1))
    point_err = {p: sum(float(g.err[g.level]) for g in groups if g.point == p) for p in eligible}

    def best_jump(gi: int):
        g = groups[gi]
        per = values[g.point] // moments[g.point].channels * len(g.channels)  # values per image in the group
        best = None
        for lv in range(g.level):
            saved = per * (widths[g.level] - widths[lv])
            cost = float(g.err[lv] - g.err[g.level])
            if math.isfinite(cost) and (best is None or cost / saved < best[0]):
                best = (max(cost, 0.0) / saved, lv, saved, cost)
        return best

    heap = [(j[0], gi, j) for gi in range(len(groups)) if (j := best_jump(gi)) is not None]
    heapq.heapify(heap)
    while heap and bits > target:
        _, gi, (_, lv, saved, cost) = heapq.heappop(heap)
        g = groups[gi]
        if point_err[g.point] + cost > MAX_ERROR:
            continue  # this group stays; cheaper steps elsewhere may still go on
        g.level = lv
        point_err[g.point] += cost
        bits -= saved
        if (j := best_jump(gi)) is not None:
            heapq.heappush(heap, (j[0], gi, j))
    chosen: dict[str, dict] = {}
    for p in eligible:
        m, shift = moments[p], shifts[p]
        cb = torch.full((m.channels,), abits, dtype=torch.int64)
        cs = torch.zeros(m.channels, dtype=torch.int64)
        for g in (g for g in groups if g.point == p):
            cb[g.channels] = widths[g.level]
            cs[g.channels] = shift[g.level, g.channels]
        if int(cb.min()) == abits:
            continue
        qp = plan.acts[p]
        plan.acts[p] = PackedGrid(qp.scale, 0, qp.bits, qp.signed, tuple(int(b) for b in cb),
                                  tuple(int(k) if b else 0 for b, k in zip(cb, cs)))
        dropped = torch.nonzero(cb == 0).flatten()
        if len(dropped):
            _fold_means(cnn, users[p], dropped, m.mean)
        chosen[p] = {"mean_bits": round(float(cb.double().mean()), 3), "dropped": int(len(dropped)),
                     "error": round(point_err[p], 5)}
    for n in cnn.nodes:  # a max pool keeps its input's grid
        if n.step == "maxpool":
            plan.acts[n.name] = plan.acts[n.inputs[0]]
    plan.meta["actcomp"] = {"ratio": ratio, "points": chosen, "estimated_ratio": round(start / bits, 3)}
    return plan


def _fold_means(cnn: CNN, users: list[Node], dropped: torch.Tensor, mean: torch.Tensor) -> None:
    """The consumers of a point whose ``dropped`` channels read 0 get those channels' means in their bias."""
    for node in users:
        if node.step == "pool":
            fc = _fc_after(cnn, node)
            w, b = fc.fc
            fc.fc = (w, b + (w[:, dropped].double() @ mean[dropped]).float())
            continue
        conv = node.conv
        w = conv.w.double()
        cg, per = w.shape[1], w.shape[0] // conv.groups
        extra = torch.zeros(w.shape[0], dtype=torch.float64)
        for ch in dropped.tolist():
            g = ch // cg
            rows = slice(g * per, (g + 1) * per)
            extra[rows] += w[rows, ch % cg].sum((1, 2)) * mean[ch]
        conv.b = (conv.b.double() + extra).float()


# ------------------------------------------------------------------ actcomp-cap
def _cap_points(cnn: CNN, users: dict[str, list[Node]]) -> list[str]:
    """Convolution outputs whose every consumer can absorb a decoder: a one-group convolution or the pool."""
    out = []
    for n in cnn.nodes:
        us = users.get(n.name, [])
        if n.step == "conv" and us and n.conv.w.shape[0] > GROUP and all(
                (u.step == "conv" and u.conv.groups == 1) or u.step == "pool" for u in us):
            out.append(n.name)
    return out


def tune_projection(sigma: torch.Tensor, g: torch.Tensor, r: int, steps: int = TUNE_STEPS):
    """``P`` [r, C] and ``D`` [C, r] lowering ``tr(G (I - D P) S (I - D P)^T)``: PCA of ``S`` (the top ``r``
    eigenvectors) to start, then Adam; returns the best pair seen and its proxy."""
    c = sigma.shape[0]
    _, vecs = torch.linalg.eigh(sigma)
    u = vecs[:, -r:].flip(1)
    p = u.T.clone().requires_grad_(True)
    d = u.clone().requires_grad_(True)
    eye = torch.eye(c, dtype=torch.float64)

    def loss():
        e = eye - d @ p
        return torch.trace(g @ e @ sigma @ e.T)

    best = (loss().item(), p.detach().clone(), d.detach().clone())
    opt = torch.optim.Adam([p, d], lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        value = loss()
        if value.item() < best[0]:
            best = (value.item(), p.detach().clone(), d.detach().clone())
        value.backward()
        opt.step()
    return best[1], best[2], best[0]


def _pca_errors(sigma: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The proxy of keeping the top r eigenvectors, for r = 0..C: ``sum_{i >= r} l_i u_i^T G u_i``."""
    vals, vecs = torch.linalg.eigh(sigma)
    vals, vecs = vals.flip(0).clamp_min(0), vecs.flip(1)
    per = vals * torch.einsum("ci,cd,di->i", vecs, g, vecs)
    tail = torch.cat([per.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)])
    return tail  # tail[r]: error with r components


def cap(cnn: CNN, batches, wbits: int, abits: int, *, progress: bool = True, ratio: float = DEFAULT_RATIO):
    """``actcomp-cap``: PCA-initialised, tuned projections with a greedy layer-wise ratio."""
    batches = list(batches)
    users = consumers(cnn)
    points = _cap_points(cnn, users)
    _, moments, sizes = _gather(cnn, batches, points, False, progress)
    values, bits, target = _budget(sizes, abits, ratio)
    start = bits
    metric = {p: _metric(cnn, users[p], moments[p]) for p in points}
    curve = {p: _pca_errors(moments[p].sigma, metric[p]) for p in points}
    rank = {p: moments[p].channels for p in points}

    def best_jump(p: str):
        c = moments[p].channels
        per = values[p] // c * abits  # bits per image of one channel
        best = None
        for r in range(rank[p] - GROUP, 0, -GROUP):
            cost = float(curve[p][r] - curve[p][rank[p]])
            if float(curve[p][r]) > MAX_ERROR:
                break
            saved = per * (rank[p] - r)
            if best is None or cost / saved < best[0]:
                best = (max(cost, 0.0) / saved, r, saved)
        return best

    heap = [(j[0], p, j) for p in points if (j := best_jump(p)) is not None]
    heapq.heapify(heap)
    while heap and bits > target:
        _, p, (_, r, saved) = heapq.heappop(heap)
        rank[p] = r
        bits -= saved
        if (j := best_jump(p)) is not None:
            heapq.heappush(heap, (j[0], p, j))
    chosen = {}
    for p in points:
        c = moments[p].channels
        if rank[p] == c:
            continue
        proj, dec, err = tune_projection(moments[p].sigma, metric[p], rank[p])
        insert_projection(cnn, p, proj, dec, users[p])
        chosen[p] = {"rank": rank[p], "channels": c, "pca_error": round(float(curve[p][rank[p]]), 5),
                     "error": round(err, 5)}
    plan = grids(cnn, collect(cnn, batches, progress), wbits, abits, "actcomp-cap")
    plan.meta["actcomp"] = {"ratio": ratio, "points": chosen, "estimated_ratio": round(start / bits, 3)}
    return plan


def insert_projection(cnn: CNN, point: str, proj: torch.Tensor, dec: torch.Tensor, users: list[Node]) -> str:
    """Put ``z = proj x`` after ``point`` and fold ``x ~ dec z`` into its consumers (each a one-group
    convolution, ``W' = W dec`` tap by tap, or the pool, the classifier's ``W' = W dec``); returns z's name."""
    name = point + ".proj"
    r = proj.shape[0]
    node = Node(name, "conv", (point,), Conv(proj.float()[:, :, None, None], torch.zeros(r), 1, (0, 0, 0, 0), 1,
                                              "none", project=True))
    at = next(i for i, n in enumerate(cnn.nodes) if n.name == point)
    cnn.nodes.insert(at + 1, node)
    for u in users:
        u.inputs = tuple(name if i == point else i for i in u.inputs)
        if u.step == "pool":
            fc = _fc_after(cnn, u)
            fc.fc = ((fc.fc[0].double() @ dec).float(), fc.fc[1])
        elif u.step == "conv" and u.conv.groups == 1:
            u.conv.w = torch.einsum("ocij,cr->orij", u.conv.w.double(), dec).float()
        else:
            raise QuantError(f"{u.name}: a {u.step} cannot absorb the decoder of {point}'s projection")
    return name


METHODS.update({"actcomp-mpdr": mpdr, "actcomp-cap": cap})
