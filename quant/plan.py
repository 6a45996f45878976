"""What a quantization method decides, and the calibration pass all methods share.

A :class:`QuantPlan` holds the (possibly rewritten) float model, a grid for
every quantization point, and the integer weights. The lowering turns a plan
into an IntegerProgram; the paper protocol turns it into a fake-quant forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from quant.model import Forward, Transformer, role
from quant.observers import Observer
from quant.quantizers import (QParams, QuantError, check_bits, fake_log2, fake_ptf, fake_tulq, fake_weight,
                              pow2_qparams, quantize_weight, weight_scales)
from sim import intops, widths

#: bits and symmetry of each role that the method does not choose (hardware unit widths)
ROLE_BITS = {"residual": (widths.RESIDUAL_BITS, True), "gelu_in": (widths.GELU_IN_BITS, False), "input": (8, False)}
#: the roles of activation points whose width a method chooses (a linear's or a matmul's input)
CHOSEN_ROLES = ("act", "qkv")


@dataclass(frozen=True)
class Sites:
    """Per-site widths that override a plan's uniform WnAn: ``weights`` maps a linear to its weight bits,
    ``acts`` an activation point (role ``act`` or ``qkv``) to its bits. Mixed precision and the
    sensitivity analysis are plans calibrated with overrides; every method honours them."""

    weights: dict[str, int] = field(default_factory=dict)
    acts: dict[str, int] = field(default_factory=dict)

    def w(self, linear: str, default: int) -> int:
        return self.weights.get(linear, default)

    def a(self, point: str, default: int) -> int:
        return self.acts.get(point, default)

    def __bool__(self) -> bool:
        return bool(self.weights or self.acts)

    def check(self, linear_names, point_names) -> None:
        """Refuse an unknown site or a width out of range, naming it."""
        for kind, names, given in (("linear", set(linear_names), self.weights),
                                   ("activation point", set(point_names), self.acts)):
            for site, bits in given.items():
                if site not in names:
                    raise QuantError(f"unknown {kind} {site!r} in the per-site widths "
                                     f"(known: {', '.join(sorted(names))})")
                check_bits(f"bits of {site}", bits)

    def as_meta(self) -> dict:
        return {"weights": dict(self.weights), "acts": dict(self.acts)}


@dataclass
class QuantPlan:
    spec: Transformer
    method: str
    wbits: int
    abits: int
    acts: dict[str, QParams]
    weight_scales: dict[str, torch.Tensor]  # per output channel
    weight_bits: dict[str, int] = field(default_factory=dict)  # overrides of wbits per linear
    code_bits: int = 4
    sqrt2: bool = False  # attention probabilities as log-sqrt(2) codes instead of log2
    softmax_sqrt2: dict[str, bool] = field(default_factory=dict)  # per block prefix ("blocks.3."), overrides sqrt2
    #: per block prefix: the softmax's truncated uniform-log2 quantizer (knee, step_bits, grid_bits, sqrt2) in
    #: place of log2 codes (sim.intops.softmax_tulq; P.V then an ordinary matmul on its 2**-grid_bits levels)
    softmax_tulq: dict[str, tuple[int, int, int, bool]] = field(default_factory=dict)
    pow2: bool = False  # every requantizer a pure shift (M = 1)
    #: point -> (r, delta): the tensor there holds x / r + delta (per channel) on the grid acts[point];
    #: the requantizer producing it realizes that as per-channel multipliers and zero points
    channel_maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: LayerNorm name -> (grid, alpha): its input narrowed to grid.bits with power-of-two factors 2**alpha_c
    ln_ptf: dict[str, tuple[QParams, torch.Tensor]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def multipliers(self, m) -> tuple[np.ndarray, np.ndarray]:
        """Real requant multipliers as (M, shift): shifts only for a power-of-two plan, dyadic otherwise."""
        from quant.quantizers import dyadic, pow2_shift

        return pow2_shift(m) if self.pow2 else dyadic(m)

    def mapped(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The tensor at point ``name`` as the program holds it: ``x / r + delta`` where a channel map applies."""
        if name in self.channel_maps:
            ratio, delta = self.channel_maps[name]
            return x / ratio + delta
        return x

    def sqrt2_at(self, prefix: str) -> bool:
        return self.softmax_sqrt2.get(prefix, self.sqrt2)

    def fake_probs(self, prefix: str, p: torch.Tensor) -> torch.Tensor:
        """Attention probabilities on the grid the softmax unit writes for block ``prefix``."""
        if prefix in self.softmax_tulq:
            return fake_tulq(p, *self.softmax_tulq[prefix])
        return fake_log2(p, self.code_bits, self.sqrt2_at(prefix))

    def wbits_of(self, name: str) -> int:
        return self.weight_bits.get(name, self.wbits)

    def int_weight(self, name: str, w: torch.Tensor):
        return quantize_weight(w, self.weight_scales[name], self.wbits_of(name))


def linears(spec: Transformer) -> dict[str, "torch.Tensor"]:
    """Every linear layer's weight by the name the forward and the program use."""
    out = {}
    if spec.patch_embed is not None:
        out["patch_embed"] = spec.patch_embed
    for i, blk in enumerate(spec.blocks):
        if getattr(blk, "merge", None) is not None:  # Swin's patch merging in front of the block
            out[f"blocks.{i}.merge"] = blk.merge
        for part in ("q", "k", "v", "proj", "fc1", "fc2"):
            out[f"blocks.{i}.{part}"] = getattr(blk, part)
    if spec.head is not None:
        out["head"] = spec.head
    return out


def linear_edges(spec: Transformer) -> list[tuple[str, str, str]]:
    """(linear, input point, output point) of every linear whose output is requantized."""
    edges = [("patch_embed", "input", "embed")] if spec.family != "bert" else []
    for i, blk in enumerate(spec.blocks):
        pre = f"blocks.{i}."
        if getattr(blk, "merge", None) is not None:
            edges.append((pre + "merge", pre + "merge_ln", pre + "merge"))
        src = pre + ("in" if spec.family == "bert" else "ln1")
        edges += [(pre + p, src, pre + p) for p in ("q", "k", "v")]
        edges += [(pre + "proj", pre + "attn", pre + "proj"), (pre + "fc1", pre + "ln2", pre + "fc1"),
                  (pre + "fc2", pre + "gelu", pre + "fc2")]
    return edges


def collect(spec: Transformer, batches: Iterable, *, desc: str = "calibrate", progress: bool = True,
            extra_roles: tuple[str, ...] = ()) -> dict[str, Observer]:
    """Run the float forward over calibration batches, observing every quantized point (and ``extra_roles``)."""
    observers: dict[str, Observer] = {}
    state = {"mask": None}

    def hook(name: str, x: torch.Tensor) -> torch.Tensor:
        if role(name) in ("float", "probs") or (role(name) == "ln_in" and "ln_in" not in extra_roles):
            return x
        obs = observers.setdefault(name, Observer(seed=len(observers)))
        mask = state["mask"]
        obs.update(x, mask if mask is not None and x.dim() == 3 else None)
        return x

    fwd = Forward(spec, hook)
    with torch.no_grad():
        for inputs, _ in tqdm(list(batches), desc=desc, disable=not progress, leave=False):
            state["mask"] = inputs["attention_mask"].bool() if isinstance(inputs, dict) else None
            fwd(inputs)
    return observers


def chosen_points(spec: Transformer, batch) -> list[str]:
    """The activation points whose width a method chooses, in forward order (one forward of ``batch``)."""
    seen: list[str] = []

    def hook(name: str, x: torch.Tensor) -> torch.Tensor:
        if role(name) in CHOSEN_ROLES and name not in seen:
            seen.append(name)
        return x

    inputs, _ = batch
    with torch.no_grad():
        Forward(spec, hook)(inputs)
    return seen


def act_grid(name: str, obs: Observer, abits: int, observer: str = "minmax", symmetric: bool = False) -> QParams:
    """The grid of one point: width and symmetry from its role (or symmetric everywhere), range from the observer."""
    r = role(name)
    bits, sym = ROLE_BITS.get(r, (abits, r == "qkv"))
    symmetric = symmetric or sym
    if r in ROLE_BITS or observer == "minmax":
        return obs.minmax(bits, symmetric)
    return getattr(obs, observer)(bits, symmetric)


def baseline_plan(spec: Transformer, observers: dict[str, Observer], wbits: int, abits: int, *,
                  method: str = "baseline", observer: str = "minmax", pow2: bool = False,
                  symmetric: bool = False, sites: Sites | None = None) -> QuantPlan:
    """Per-tensor min/max (or ``observer``) activation grids and per-channel min/max weight scales at
    WnAn, with ``sites``' per-site widths where it gives them."""
    sites = sites or Sites()
    acts = {name: act_grid(name, obs, sites.a(name, abits), observer, symmetric) for name, obs in observers.items()}
    if pow2:
        acts = {k: pow2_qparams(v) for k, v in acts.items()}
    scales = {name: weight_scales(lin.w, sites.w(name, wbits)) for name, lin in linears(spec).items()}
    return QuantPlan(spec=spec, method=method, wbits=wbits, abits=abits, acts=acts, weight_scales=scales, pow2=pow2,
                     weight_bits={n: b for n, b in sites.weights.items() if b != wbits},
                     meta={"sites": sites.as_meta()} if sites else {})


def integer_softmax(plan: QuantPlan, prefix: str, scores: torch.Tensor) -> torch.Tensor:
    """Attention weights as the program computes them: the Q.K^T accumulator recovered from the
    fake-quantized scores, the program's requant into the softmax unit's log2 domain, the unit's codes."""
    f = widths.SOFTMAX_FRAC_BITS
    blk = plan.spec.blocks[int(prefix.split(".")[1])]
    s_acc = plan.acts[prefix + "q"].scale * plan.acts[prefix + "k"].scale * blk.attn_scale
    m, shift = plan.multipliers(s_acc * math.log2(math.e) * 2**f)
    valid = torch.isfinite(scores)
    acc = torch.round(torch.where(valid, scores, 0.0).double() / s_acc).to(torch.int64).numpy()
    t = intops.requantize(acc, m, shift, widths.SOFTMAX_IN_BITS)
    if prefix in plan.softmax_tulq:
        knee, step_bits, grid_bits, sqrt2 = plan.softmax_tulq[prefix]
        y = intops.softmax_tulq(t, valid.numpy(), knee, step_bits, grid_bits, sqrt2=sqrt2)
        return torch.from_numpy(y.astype(np.float64) / 2.0**grid_bits)
    sqrt2 = plan.sqrt2_at(prefix)
    codes = intops.softmax_log2(t, valid.numpy(), plan.code_bits, sqrt2=sqrt2)
    weights = intops.log2_weights(codes, plan.code_bits, sqrt2)
    return torch.from_numpy(weights.astype(np.float64) / 2.0 ** intops.log2_acc_shift(plan.code_bits, sqrt2))


def paper_forward(plan: QuantPlan, emulate_integer: bool = False) -> Forward:
    """Fake-quant forward (paper protocol): linear and matmul inputs and weights quantized, the rest float.

    ``emulate_integer`` makes it quant's own emulation of the integer program: the residual stream
    (int16) and the GELU input (int8) on their grids too, and the attention codes computed by the
    softmax unit's integer function from scores on its input grid; LayerNorm and GELU stay float.
    """
    fake_roles = ("act", "qkv", "input") + (("residual", "gelu_in") if emulate_integer else ())
    scores: dict[str, torch.Tensor] = {}

    def act(name: str, x: torch.Tensor) -> torch.Tensor:
        r = role(name)
        if emulate_integer and r == "float" and name.endswith("scores"):
            scores[name[: -len("scores")]] = x
        if r == "probs":
            prefix = name[: -len("probs")]
            if emulate_integer:
                return integer_softmax(plan, prefix, scores.pop(prefix)).to(x.dtype)
            return plan.fake_probs(prefix, x)
        if r == "ln_in" and name[: -len(".ln_in")] in plan.ln_ptf:
            grid, alpha = plan.ln_ptf[name[: -len(".ln_in")]]
            return fake_ptf(x, grid, alpha)
        if r in fake_roles and name in plan.acts:
            return plan.acts[name].fake(plan.mapped(name, x))
        return x

    made: dict[str, tuple] = {}  # name -> (weight, scales, stamp, fake weight): searches run many forwards

    def weight(name: str, w: torch.Tensor) -> torch.Tensor:
        scales, bits = plan.weight_scales[name], plan.wbits_of(name)
        if w.requires_grad:
            return fake_weight(w, scales, bits)
        stamp = (bits, w._version, scales._version)  # an in-place edit of either tensor moves its version
        hit = made.get(name)
        if hit is None or hit[0] is not w or hit[1] is not scales or hit[2] != stamp:
            made[name] = hit = (w, scales, stamp, fake_weight(w, scales, bits))
        return hit[3]

    return Forward(plan.spec, act, weight)
