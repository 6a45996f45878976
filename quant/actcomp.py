"""Activation compression for CNNs: two methods that shrink what the accelerator stores of feature maps.

Both start from the baseline's grids (``quant.cnn.baseline``) and a traffic target: the activations the
graph stores (every point's values at its width: the image at 8 bits, feature maps at ``abits``) shrunk
``ratio`` times. A greedy search (:func:`_greedy`) spends that target where a calibration error proxy
grows least per bit saved, within an error budget ``max_error`` (default :data:`MAX_ERROR`) on the proxy
summed over all points (errors made at successive points add up at the output), so where the target
costs more than that the method stops short of it (the cost model then says what was reached).

The error proxy of a point is relative and measured where it matters, at its consumers: for a consumer
with weights ``M`` (a convolution's every tap, the classifier behind the global pool; a residual add or
a max pool passes the error on as it is) the error energy ``E||M e||^2`` over the output energy
``E||M x||^2``, summed over the point's consumers (cross-tap correlations of a k x k convolution left out;
a depthwise consumer is looked through to the consumers after it, see :func:`_metric`).

``actcomp-mpdr`` (channel groups with their own widths, 0 = dropped): a point's channels are ordered by
importance (their share of the consumers' output energy) and cut into groups of :data:`GROUP` channels
(the vector lanes' width); each group gets a width from {0, 2, 4, 8} up to ``abits`` and each channel a
grid ``2**k`` steps of the point's own (``k`` searched on calibration samples, each candidate judged on
the worse of the two halves of the calibration images, ``bits + k <= abits``), so
that the consumer reads every channel on one grid: the requantizer rounds a channel onto its grid, the
packer keeps its ``bits`` bits, and what the buffer and DRAM hold is a row of channels at the sum of their
widths (``sim.intops.pack_channels``; ``sim.cycles`` counts those bytes). A dropped channel reads as 0 and
its calibration mean is folded into its consumers' biases (exact for a 1x1 convolution and the pooled
classifier; a k x k convolution's padded border sees the mean where the float model saw 0), so it is
allowed only where every consumer is a convolution or the pool. The search is greedy over all groups of
all points at once. A channel permutation that made each group contiguous would fold exactly into the
producer's rows and the consumers' columns; it is not applied, because the requantizer's per-channel
table already addresses every channel and the stored bytes are the same.

``actcomp-cap`` (a learned projection per point, decompression folded into the consumer): where every
consumer of a convolution's output is a convolution with one group or the pool (so that the consumer's
weights absorb the decoder exactly, padding included: ``W' = W D``), the point is replaced by ``z = P x``
with ``r`` channels: ``P`` [r, C] initialised from the top ``r`` eigenvectors of the uncentered
second-moment matrix of ``x`` (PCA; uncentered keeps the map linear, so the fold is exact), then ``P`` and
``D`` [C, r] tuned by gradient descent on the proxy (a closed form in the second moments: seconds on a
CPU). ``r`` shrinks by :data:`GROUP` channels a step, point by point, where the proxy grows least per byte
saved (each step's cost: PCA's error fitted on one half of the calibration images and measured on the
other, :func:`held_out_errors`). The projection is a 1x1 convolution that the array runs on
its producer's drain (``sim.ops.Project``): ``x`` never reaches the activation buffer whole nor DRAM, only
``z`` does. Points whose consumers cannot absorb the decoder (a depthwise convolution, a residual add, a
max pool) are left alone: a separate decompression pass would store ``x`` again, adding traffic.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import torch

from quant.cnn import CNN, METHODS, Conv, Node, PackedGrid, _unsigned, collect, grids
from quant.quantizers import QuantError

GROUP = 16  #: channels per group / per projection step: the accelerator's vector width
DEFAULT_RATIO = 3.0  #: the seeds' claim: about 3x less activation memory traffic
MAX_ERROR = 0.02  #: the error budget: the proxy added over all points (the frontier around it: bench_actcomp)
SAMPLE_ROWS = 2048  #: pixel rows of each point kept for the width search
TUNE_STEPS = 300  #: gradient steps on a projection, at most
TUNE_FLOPS = 3e10  #: and at most about this much arithmetic (a wide point gets fewer steps)


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


def _gram(cnn: CNN, node: Node, channels: int) -> torch.Tensor:
    """``M^T M`` [C, C] of the weight rows ``M`` a consumer applies to its input's channels (every tap of a
    convolution; a grouped one block by block; the classifier behind the pool); the identity for a step
    that passes values on (add, max pool)."""
    if node.step == "conv":
        w = node.conv.w.double()
        groups, (o, cg) = node.conv.groups, w.shape[:2]
        blocks = torch.einsum("gpckl,gpdkl->gcd", *(w.reshape(groups, o // groups, cg, *w.shape[2:]),) * 2)
        return blocks[0] if groups == 1 else torch.block_diag(*blocks)
    if node.step == "pool":
        w = _fc_after(cnn, node).fc[0].double()
        return w.T @ w
    return torch.eye(channels, dtype=torch.float64)


@dataclass
class _Moments:
    """Channel statistics of one point over the calibration images (channels last)."""

    channels: int
    n: int = 0
    total: torch.Tensor | None = None  #: sum of x [C]
    second: torch.Tensor | None = None  #: sum of x x^T [C, C]
    samples: list = field(default_factory=list)
    halves: list = field(default_factory=lambda: [0, 0])  #: sum of x x^T over the first / second half
    sample_half: list = field(default_factory=list)  #: whether each sample row comes from the second half
    images: int = 0
    split: int = 0  #: the first image of the second half

    def add(self, x: torch.Tensor, keep: int, gen: torch.Generator) -> None:
        """``keep`` random rows of ``x`` as samples (float32); with samples only the diagonal of the second
        moments (what the width search needs), else the full matrix (the projection's), also by halves of
        the images in calibration order (other photographs, where the images are crops photograph by
        photograph), to measure a projection on images it was not fitted to."""
        rows = x.movedim(1, -1).reshape(-1, self.channels).double()
        self.n += rows.shape[0]
        self.total = rows.sum(0) if self.total is None else self.total + rows.sum(0)
        if keep:
            outer = torch.diag((rows * rows).sum(0))
        else:
            per_image = x.movedim(1, -1).reshape(x.shape[0], -1, self.channels).double()
            cut = min(max(self.split - self.images, 0), x.shape[0])
            first, second = per_image[:cut].reshape(-1, self.channels), per_image[cut:].reshape(-1, self.channels)
            self.halves = [self.halves[0] + first.T @ first, self.halves[1] + second.T @ second]
            outer = None
        self.images += x.shape[0]
        self.second = (self.second if self.second is not None else 0) + (outer if outer is not None else 0)
        if keep:
            pick = torch.randperm(rows.shape[0], generator=gen)[:keep]
            self.samples.append(rows[pick].float())
            image = self.images - x.shape[0] + pick // (rows.shape[0] // x.shape[0])
            self.sample_half.append(image >= self.split)

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.n

    @property
    def sigma(self) -> torch.Tensor:
        if isinstance(self.second, int):  # gathered by halves
            return (self.halves[0] + self.halves[1]) / self.n
        return self.second / self.n

    def half_sigmas(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.n // self.images
        return self.halves[0] / (rows * self.split), self.halves[1] / (rows * (self.images - self.split))

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample rows and whether each comes from the second half of the images."""
        return torch.cat(self.samples).double(), torch.cat(self.sample_half)


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
                moments[name] = _Moments(t.shape[1], split=sum(len(x) for x, _ in batches) // 2)
            moments[name].add(t.detach(), keep, gen)

    observers = collect(cnn, batches, progress, also)
    return observers, moments, sizes


def _depthwise(node: Node, channels: int) -> bool:
    return node.step == "conv" and node.conv.groups == channels == node.conv.w.shape[0]


def _metric(cnn: CNN, users: list[Node], m: _Moments, later: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``G`` [C, C]: the error proxy of an error ``e`` is ``E e^T G e`` (each consumer's ``M^T M`` over its
    output energy ``tr(M S M^T)``, S the second moments; a pass-through step: identity over ``tr S``).

    A depthwise consumer scales each channel by its filter alone, so its own output energy says nothing
    of what a channel is worth: where ``later`` holds the diagonal metric of its output (the consumers
    after it), channel c's error counts as ``|f_c|^2`` times that output channel's weight."""
    g = torch.zeros(m.channels, m.channels, dtype=torch.float64)
    sigma = m.sigma
    for node in users:
        mtm = _gram(cnn, node, m.channels)
        if later is not None and node.name in later and _depthwise(node, m.channels):
            g += torch.diag(torch.diagonal(mtm) * later[node.name])
        else:
            g += mtm / max(float((mtm * sigma).sum()), 1e-30)
    return g


def _greedy(ladders: list[list[tuple[float, float]]], bits: float, target: float, max_error: float) -> list[int]:
    """The level of each item: ``ladders[i][l]`` = (bits saved, proxy added) at level l of item i (level 0:
    nothing saved, nothing added; an infinite proxy: out of reach). Each step takes the jump, over all
    items and all deeper levels, that adds the least proxy per bit saved and fits what is left of the
    error budget ``max_error`` (summed over every item: errors at successive points add up), until the
    bits reach ``target`` or nothing fits."""
    level = [0] * len(ladders)
    spent = 0.0

    def jump(i: int):
        here_saved, here_err = ladders[i][level[i]]
        best = None
        for lv in range(level[i] + 1, len(ladders[i])):
            saved, err = ladders[i][lv][0] - here_saved, ladders[i][lv][1] - here_err
            if saved > 0 and math.isfinite(err) and spent + err <= max_error and (
                    best is None or max(err, 0.0) / saved < best[0]):
                best = (max(err, 0.0) / saved, i, lv)
        return best

    heap = [j for i in range(len(ladders)) if (j := jump(i)) is not None]
    heapq.heapify(heap)
    while heap and bits > target:
        _, i, lv = heapq.heappop(heap)
        added = ladders[i][lv][1] - ladders[i][level[i]][1]
        if spent + added > max_error:  # the budget shrank since this jump was priced
            if (j := jump(i)) is not None:
                heapq.heappush(heap, j)
            continue
        bits -= ladders[i][lv][0] - ladders[i][level[i]][0]
        spent += added
        level[i] = lv
        if (j := jump(i)) is not None:
            heapq.heappush(heap, j)
    return level


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


def _channel_errors(x: torch.Tensor, half: torch.Tensor, scale: float, abits: int, signed: bool,
                    mean: torch.Tensor, widths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel and width: the mean squared error on samples ``x`` [S, C] and the best shift ``k``
    (the channel's grid ``scale * 2**k``, ``bits + k <= abits``); width 0: the variance about the mean.

    Each error is the worse of the two halves of the calibration images (``half``: a sample's half): a
    grid that clips a channel where one half's images happen to stay low is not chosen for the other's
    (efficientnet-lite0's calibration crops come from four photographs)."""

    def worst(sq: torch.Tensor) -> torch.Tensor:
        parts = [sq[h].mean(0) for h in (~half, half) if bool(h.any())]
        return torch.stack(parts).max(0).values

    c = x.shape[1]
    err = torch.full((len(widths), c), math.inf, dtype=torch.float64)
    shift = torch.zeros((len(widths), c), dtype=torch.int64)
    for wi, b in enumerate(widths):
        if b == 0:
            err[wi] = worst((x - mean) ** 2)
            continue
        lo, hi = (-(1 << (b - 1)), (1 << (b - 1)) - 1) if signed else (0, (1 << b) - 1)
        for k in range(abits - b + 1):
            step = scale * 2.0 ** k
            e = worst((torch.clamp(torch.round(x / step), lo, hi) * step - x) ** 2)
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


def mpdr(cnn: CNN, batches, wbits: int, abits: int, *, progress: bool = True, ratio: float = DEFAULT_RATIO,
         max_error: float = MAX_ERROR):
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
    later: dict[str, torch.Tensor] = {}
    for p in reversed(eligible):  # a point's metric may rest on the one after its depthwise consumer
        m = moments[p]
        may_drop = all(u.step in ("conv", "pool") for u in users[p])
        ws = widths if may_drop else [b for b in widths if b > 0]
        err, shift = _channel_errors(*m.sample(), plan.acts[p].scale, abits, p not in unsigned, m.mean, ws)
        weight = later[p] = torch.diagonal(_metric(cnn, users[p], m, later))  # each channel's part of the proxy
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
    ladders = []
    for g in groups:  # from abits down to 0
        per = values[g.point] // moments[g.point].channels * len(g.channels)  # values per image in the group
        top = float(g.err[-1])
        ladders.append([(per * (abits - widths[lv]), float(g.err[lv]) - top) for lv in reversed(range(len(widths)))])
    levels = _greedy(ladders, bits, target, max_error)
    for g, lv in zip(groups, levels):
        g.level = len(widths) - 1 - lv
    bits = start - sum(ladders[i][lv][0] for i, lv in enumerate(levels))
    point_err = {p: sum(float(g.err[g.level] - g.err[-1]) for g in groups if g.point == p) for p in eligible}
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
    plan.meta["actcomp"] = {"ratio": ratio, "max_error": max_error, "points": chosen,
                            "estimated_ratio": round(start / bits, 3)}
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
    base = float((g * sigma).sum())
    steps = max(1, min(steps, int(TUNE_FLOPS / (12 * r * c * c))))

    def loss():  # tr(G S) - 2 tr(G D P S) + tr(D^T G D P S P^T), in O(r C^2)
        ps, gd = p @ sigma, g @ d
        return base - 2 * (gd * ps.T).sum() + ((d.T @ gd) * (ps @ p.T)).sum()

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


def _pca_errors(sigma: torch.Tensor, g: torch.Tensor, test: torch.Tensor | None = None) -> torch.Tensor:
    """The proxy of keeping the top r eigenvectors of ``sigma``, for r = 0..C, on second moments ``test``
    (default: ``sigma`` itself): ``tr(G Q_r T Q_r)`` with ``Q_r`` the projection off the top r,
    ``= sum_{i, j >= r} (U^T G U)_ij (U^T T U)_ij``."""
    _, vecs = torch.linalg.eigh(sigma)
    vecs = vecs.flip(1)
    both = (vecs.T @ g @ vecs) * (vecs.T @ (sigma if test is None else test) @ vecs)
    c = both.shape[0]
    rows = torch.flip(torch.cumsum(torch.flip(torch.triu(both, 1).sum(1) * 2 + torch.diagonal(both), [0]), 0), [0])
    return torch.cat([rows, torch.zeros(1, dtype=torch.float64)])[: c + 1]  # [r]: error with r components


def held_out_errors(m: _Moments, g: torch.Tensor) -> torch.Tensor:
    """:func:`_pca_errors` fitted on one half of the calibration images and measured on the other, both
    ways, averaged: what a projection loses on images it has not seen (fitted on all of them, it looks
    better than it is where a wide point has few pixel rows)."""
    a, b = m.half_sigmas()
    return (_pca_errors(a, g, b) + _pca_errors(b, g, a)) / 2


def cap(cnn: CNN, batches, wbits: int, abits: int, *, progress: bool = True, ratio: float = DEFAULT_RATIO,
        max_error: float = MAX_ERROR):
    """``actcomp-cap``: PCA-initialised, tuned projections with a greedy layer-wise ratio."""
    batches = list(batches)
    users = consumers(cnn)
    points = _cap_points(cnn, users)
    _, moments, sizes = _gather(cnn, batches, points, False, progress)
    values, bits, target = _budget(sizes, abits, ratio)
    start = bits
    metric = {p: _metric(cnn, users[p], moments[p]) for p in points}
    curve = {p: held_out_errors(moments[p], metric[p]) for p in points}
    ladders = []
    for p in points:  # r = C, C - GROUP, ... down to GROUP channels
        c = moments[p].channels
        per = values[p] // c * abits  # bits per image of one channel
        ladders.append([(per * (c - r), float(curve[p][r] - curve[p][c])) for r in range(c, 0, -GROUP)])
    levels = _greedy(ladders, bits, target, max_error)
    rank = {p: moments[p].channels - GROUP * lv for p, lv in zip(points, levels)}
    bits -= sum(ladders[i][lv][0] for i, lv in enumerate(levels))
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
    plan.meta["actcomp"] = {"ratio": ratio, "max_error": max_error, "points": chosen,
                            "estimated_ratio": round(start / bits, 3)}
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
