"""Block reconstruction: learned weight rounding and activation step sizes, one block at a time.

A plan's grids come from a calibration-only method; reconstruction then adjusts, inside each block,

* the rounding of every weight (AdaRound): the integer is ``floor(w / s) + h`` with ``h`` in {0, 1}
  learned through a rectified sigmoid, a regularizer pushing it to 0 or 1 as the temperature falls;
  the scales ``s`` stay what the method chose, so the program's weights are still integers on them;
* the step size of every activation grid the method chooses (roles ``act`` and ``qkv``; LSQ, a
  straight-through rounding), its zero point kept (an integer port);

to minimize the block output's squared error against the FP32 block, the quantized block fed what
the blocks already reconstructed produce. Only the weights' integers and the grids' scales change: the
lowering, the program and the hardware are those of the method underneath.

``decline`` (TP-ViT's progressive bit-decline): the block starts on weights at the first width of
the schedule (plain rounding, finer than the target) and moves to the learned target-width rounding
through transition weights ``t`` falling linearly from 1 to 0 over each step of the schedule,
``w = t * Q_prev(w) + (1 - t) * Q_next(w)``; the last step ends on the target grid alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from quant.model import Forward, role
from quant.plan import QuantPlan, linears
from quant.quantizers import QParams, fake_weight

ZETA, GAMMA = 1.1, -0.1  #: AdaRound's rectified-sigmoid stretch


@dataclass(frozen=True)
class Schedule:
    """How long and how hard one block is reconstructed."""

    iters: int = 300
    #: calibration samples (sentences / images) a step; 16 rather than 32 halves a step's cost, for minilm W4A4
    #: cosine (first 200 sentences) aocq 0.9105 -> 0.9076, tpvit 0.8879 -> 0.8830, vit-digits W4A4 top-1
    #: aocq 97.78 -> 98.52 %, tpvit 98.15 -> 98.52 %
    batch: int = 16
    lr_round: float = 1e-2
    lr_scale: float = 0.0  #: activation step sizes learned too when > 0 (off: it lowered minilm W4A4)
    reg: float = 0.01  #: weight of the rounding regularizer
    beta: tuple[float, float] = (20.0, 2.0)  #: the regularizer's temperature, annealed
    warmup: float = 0.2  #: fraction of the iterations without the regularizer
    outlier: float = 0.0  #: the block loss weighs channel c by rms_c ** outlier (FP32 output), mean weight 1
    decline: tuple[int, ...] = ()  #: weight widths above the target, stepped down in order (e.g. (8, 6))
    decline_share: float = 0.25  #: fraction of the iterations spent before the target width alone
    seed: int = 0


class _LearnedGrid(torch.autograd.Function):
    """Quantize-dequantize ``x`` on a grid of step ``s`` (a 0-d tensor), in one node: the rounding passes
    gradients straight through to ``x`` strictly inside the grid's range and none at or past its ends,
    and ``s`` gets LSQ's gradient, ``q - x / s`` inside and ``q`` elsewhere (``q`` the integer less the zero
    point). The straight-through rounding and clamp of autograd's own ops, without their intermediate nodes."""

    @staticmethod
    def forward(ctx, x, s, zero_point: int, qmin: int, qmax: int):
        v = x / s
        r = torch.round(v) + zero_point
        inside = (r > qmin) & (r < qmax)  # torch.clamp's convention: an end passes none
        q = r.clamp_(qmin, qmax).sub_(zero_point)
        ctx.save_for_backward(v, q, inside)
        return q * s

    @staticmethod
    def backward(ctx, g):
        v, q, inside = ctx.saved_tensors
        gs = (g * torch.where(inside, q - v, q)).sum()
        return g * inside, gs, None, None, None


class _Rounding(torch.nn.Module):
    """One linear's learned rounding on its per-output-channel scales."""

    def __init__(self, w: torch.Tensor, scales: torch.Tensor, bits: int):
        super().__init__()
        self.s = scales[:, None].to(w.dtype)
        self.qmax = (1 << (bits - 1)) - 1
        self.w = w
        self.floor = torch.floor(w / self.s)
        rest = (w / self.s - self.floor).clamp(1e-4, 1 - 1e-4)
        self.alpha = torch.nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def soft(self) -> torch.Tensor:
        return torch.clamp(self.floor + self.h(), -self.qmax, self.qmax) * self.s

    def hard(self) -> torch.Tensor:
        return torch.clamp(self.floor + (self.alpha >= 0).to(self.w.dtype), -self.qmax, self.qmax) * self.s

    def at(self, bits: int) -> torch.Tensor:
        """The weights plainly rounded at a wider width ``bits`` (the same range: scales shrunk in proportion)."""
        q = (1 << (bits - 1)) - 1
        s = self.s * self.qmax / q
        return torch.clamp(torch.round(self.w / s), -q, q) * s

    def penalty(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


class _Step(torch.nn.Module):
    """One activation grid with a learned scale (LSQ: gradients through a straight-through rounding)."""

    def __init__(self, qp: QParams):
        super().__init__()
        self.qp = qp
        self.log_s = torch.nn.Parameter(torch.tensor(math.log(qp.scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LearnedGrid.apply(x, self.log_s.exp(), self.qp.zero_point, self.qp.qmin, self.qp.qmax)

    def grid(self) -> QParams:
        return QParams(float(self.log_s.exp()), self.qp.zero_point, self.qp.bits, self.qp.signed)


def _block_sites(plan: QuantPlan, i: int) -> tuple[list[str], list[str]]:
    pre = f"blocks.{i}."
    lin = [n for n in linears(plan.spec) if n.startswith(pre)]
    # the block's chosen points ("blocks.3.ln2"), not a point's auxiliary grid ("blocks.3.gelu.rom")
    acts = [p for p in plan.acts if p.startswith(pre) and p.count(".") == 2 and role(p) in ("act", "qkv")]
    return lin, acts


def _learned_forward(plan: QuantPlan, steps: dict[str, _Step], weights) -> Forward:
    """The paper protocol's forward with the learned grids and the given weights (name -> tensor). The
    attention codes and the learned grids pass gradients straight through; a grid that is not learned
    rounds plainly and passes none, so with step sizes off only the linears whose outputs reach the block
    output without another grid (the output projection, fc2) learn their rounding."""
    def act(name: str, x: torch.Tensor) -> torch.Tensor:
        r = role(name)
        if r == "probs":
            p = plan.fake_probs(name[: -len("probs")], x)
            return x + (p - x).detach()
        if name in steps:
            return steps[name](plan.mapped(name, x))
        if r in ("act", "qkv", "input") and name in plan.acts:
            with torch.no_grad():  # plain rounding: its gradient is zero, so none is computed
                return plan.acts[name].fake(plan.mapped(name, x))
        return x

    return Forward(plan.spec, act, weights)


def _decline_phase(frac: float, steps: int, share: float) -> tuple[int, float]:
    """Where iteration ``frac`` (0..1) of a block lies in a decline through ``steps`` widths above the target:
    the transition ``k`` (1..steps: from the k-th width of the schedule to the next one, the target after the
    last) and the transition weight ``t`` of the width left behind, falling linearly from 1 to 0. The
    transitions share the first ``share`` of the iterations evenly; the rest run on the target width alone."""
    if steps == 0 or frac >= share:
        return steps, 0.0
    edge = share / steps
    k = min(int(frac / edge), steps - 1)
    return k + 1, 1 - (frac - k * edge) / edge


def _channel_weights(targets: list[torch.Tensor], masks: list, outlier: float) -> torch.Tensor:
    """Per output channel, ``rms_c ** outlier`` over the block's FP32 outputs (valid tokens), mean 1: with
    ``outlier`` > 0 the errors of the outlier channels weigh more in the loss."""
    rows = torch.cat([t[m] if m is not None else t.reshape(-1, t.shape[-1]) for t, m in zip(targets, masks)])
    w = rows.pow(2).mean(0).sqrt().clamp_min(1e-8).pow(outlier)
    return w / w.mean()


def _float_forward(plan: QuantPlan) -> Forward:
    """The FP32 reference on the plan's (possibly rewritten) model: a method's channel maps applied, nothing
    quantized."""
    return Forward(plan.spec.copy(), plan.mapped)


def reconstruct(plan: QuantPlan, batches: list, schedule: Schedule = Schedule(), *, progress: bool = True,
                desc: str = "reconstruct") -> QuantPlan:
    """Reconstruct every block of ``plan`` in place (its linears' weights snapped to the learned integers, its
    chosen activation grids rescaled) and return it."""
    spec = plan.spec
    gen = torch.Generator().manual_seed(schedule.seed)
    fp = _float_forward(plan)
    frozen = {}  # learned linears, as hard weights

    def fixed(name, w):
        return frozen[name] if name in frozen else fake_weight(w, plan.weight_scales[name], plan.wbits_of(name))

    with torch.no_grad():
        q_fwd = _learned_forward(plan, {}, fixed)
        xs = [(q_fwd.embed(inputs), fp.embed(inputs)) for inputs, _ in batches]
    # the calibration batches cut to ``batch`` samples (they are sorted by length: little padding in each)
    b = schedule.batch
    samples = [(xq[j : j + b], m[j : j + b] if m is not None else None, xf[j : j + b])
               for (xq, m), (xf, _) in xs for j in range(0, xq.shape[0], b)]
    for i in tqdm(range(len(spec.blocks)), desc=desc, disable=not progress, leave=False):
        lin_names, act_names = _block_sites(plan, i)
        rounding = {n: _Rounding(linears(spec)[n].w, plan.weight_scales[n], plan.wbits_of(n)) for n in lin_names}
        steps = {p: _Step(plan.acts[p]) for p in act_names} if schedule.lr_scale > 0 else {}
        phase = {"t": 0.0, "k": 0}  # transition weight and the step of the decline schedule
        widths = schedule.decline

        def weights(name, w):
            if name not in rounding:
                return fixed(name, w)
            r = rounding[name]
            if not widths:
                return r.soft()
            k, t = phase["k"], phase["t"]
            nxt = r.at(widths[k]) if k < len(widths) else r.soft()
            return t * r.at(widths[k - 1]) + (1 - t) * nxt if t > 0 else nxt

        q_fwd = _learned_forward(plan, steps, weights)
        with torch.no_grad():
            targets = [fp.block(i, xf, m) for _, m, xf in samples]
            weigh = _channel_weights(targets, [m for _, m, _ in samples], schedule.outlier)
        opt = torch.optim.Adam([{"params": [r.alpha for r in rounding.values()], "lr": schedule.lr_round},
                                {"params": [s.log_s for s in steps.values()], "lr": schedule.lr_scale}])
        for it in range(schedule.iters):
            frac = it / max(1, schedule.iters - 1)
            phase["k"], phase["t"] = _decline_phase(frac, len(widths), schedule.decline_share)
            j = int(torch.randint(len(samples), (1,), generator=gen))
            xq, m, _ = samples[j]
            err = ((q_fwd.block(i, xq, m) - targets[j]).pow(2) * weigh).mean(-1)
            loss = (err[m] if m is not None else err).mean()
            if frac >= schedule.warmup:
                warm = (frac - schedule.warmup) / (1 - schedule.warmup)
                beta = schedule.beta[0] + (schedule.beta[1] - schedule.beta[0]) * warm
                loss = loss + schedule.reg * sum(r.penalty(beta) for r in rounding.values()) / sum(
                    r.alpha.numel() for r in rounding.values())
            if not loss.requires_grad:  # a transition between two finer widths: nothing learned yet
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            for n, r in rounding.items():
                linears(spec)[n].w = r.hard()
                frozen[n] = linears(spec)[n].w
            for p, s in steps.items():
                plan.acts[p] = s.grid()
            q_fwd = _learned_forward(plan, {}, fixed)
            samples = [(q_fwd.block(i, xq, m), m, fp.block(i, xf, m)) for xq, m, xf in samples]
    return plan
