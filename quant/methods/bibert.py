"""``bibert`` (BiBERT, Qin et al., ICLR 2022) and ``sign``: a fully binarized BERT encoder as an integer program.

Every linear layer's weights are one sign bit each with a real scale per output
channel, ``alpha_n sign(w_n)``, ``alpha_n = mean |w_n|``; every linear's input is
the sign of its real value (``sign(0) = +1``); the word embedding table is one
sign bit an entry with one magnitude a row (``mean |E_v|``). Attention is
Bi-Attention: the map ``bool(sign(Q) . sign(K)^T >= 0)`` (masked keys 0)
in place of softmax, then ``map . sign(V)``; the context's sign feeds the
output projection. The FFN's second linear reads ``sign(GELU(h)) = sign(h)``,
so no GELU remains. LayerNorm, the residual stream (int16) and the position
and token-type tables stay as in the integer BERT programs.

In the program the scales leave the products: ``xnor`` products of sign bits
(``binary_linear``, ``binary_matmul``), the attention map's ``and`` product
with V's sign bits, a ``binarize`` compare wherever a sign is taken (a
scale and bias ahead of a sign become the exact threshold
``ceil(-b / alpha)``), and the requantizer multiplies by ``alpha`` where a
binary linear writes the residual stream (attention output, FFN output).

``sign`` is the plain binarization of the FP32 model (no training): the
straightforward baseline. ``bibert`` is the same structure with weights
trained by Direction-Matching Distillation and hidden-state distillation from
the FP32 teacher (``ptq2rtl.bibert``); it expects the trained student spec,
which the flows pass in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quant.lower import T, _Builder
from quant.methods import register_method
from quant.model import Transformer, _ln
from quant.plan import QuantPlan
from quant.quantizers import QParams, QuantError, qparams_from_range
from sim import intops, widths
from sim.program import IntegerProgram

#: the residual-stream points the program keeps on int16 grids (per block, and the embedding's LayerNorm)
BLOCK_POINTS = ("proj", "res1", "ln1_out", "fc2", "res2", "ln2_out")
CTX_WINDOW = 4.0  #: the attention context is a count of up to T signs: its sign's gradient passes where |ctx| <= 4


# ------------------------------------------------------------------ the binarized float forward (training, calibration)
class _Sign(torch.autograd.Function):
    """``+1`` where ``x >= 0``, else ``-1``; backward passes the gradient where ``|x| <= window``."""

    @staticmethod
    def forward(ctx, x, window):
        ctx.save_for_backward(x)
        ctx.window = window
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= ctx.window).to(grad.dtype), None


class _BinaryWeight(torch.autograd.Function):
    """``alpha_n sign(w_n)`` per output channel; backward is straight through (every latent weight stays well
    inside the clip window, so the window is left out: two passes over the weights a step, not six)."""

    @staticmethod
    def forward(ctx, w):
        alpha = w.abs().mean(dim=-1, keepdim=True)
        return torch.where(w >= 0, alpha, -alpha)

    @staticmethod
    def backward(ctx, grad):
        return grad


def sign(x: torch.Tensor, window: float = 1.0) -> torch.Tensor:
    """``+1`` where ``x >= 0``, else ``-1``; the gradient passes where ``|x| <= window`` (clipped straight-through)."""
    if not x.requires_grad:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return _Sign.apply(x, window)


def bool_map(s: torch.Tensor, scale: float) -> torch.Tensor:
    """``1`` where ``s >= 0``, else ``0``; the gradient of a hard sigmoid of ``scale * s`` passes."""
    hard = (s >= 0).to(s.dtype)
    if not s.requires_grad:
        return hard
    soft = (s * scale).clamp(-1.0, 1.0) * 0.5 + 0.5
    return soft + (hard - soft).detach()


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per output channel (row): ``mean |w_n|``, the scale of least squared error for ``alpha sign(w)``."""
    return w.abs().mean(dim=-1)


def binary_weight(w: torch.Tensor) -> torch.Tensor:
    return _BinaryWeight.apply(w) if w.requires_grad else weight_scale(w)[..., None] * torch.where(w >= 0, 1.0, -1.0)


def linear_out(x_sign: torch.Tensor, lin) -> torch.Tensor:
    return F.linear(x_sign, binary_weight(lin.w), lin.b)


class BinaryForward:
    """The float forward of a binarized BERT encoder (the spec's tensors are its latent real weights).

    ``record(name, x)`` sees every distilled and calibrated point: ``blocks.i.q`` / ``k`` / ``v`` (the real
    values before their sign), ``embed``, ``embed_ln`` and :data:`BLOCK_POINTS`, and ``pool``.
    """

    def __init__(self, spec: Transformer, record=None):
        if spec.family != "bert":
            raise QuantError(f"{spec.name}: binarization is implemented for BERT encoders, not the {spec.family!r} family")
        self.spec = spec
        self.record = record or (lambda name, x: None)

    def __call__(self, inputs) -> torch.Tensor:
        s, rec = self.spec, self.record
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        types = inputs.get("token_type_ids")
        types = torch.zeros_like(ids) if types is None else types
        x = binary_weight(s.word[ids]) + s.pos_emb[torch.arange(ids.shape[1])][None]
        if s.type_emb is not None:
            x = x + s.type_emb[types]
        rec("embed", x)
        x = _ln(x, s.emb_norm)
        rec("embed_ln", x)
        for i, blk in enumerate(s.blocks):
            x = self.block(i, blk, x, mask)
        m = mask[..., None].to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1)
        rec("pool", pooled)
        return pooled

    def block(self, i: int, blk, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s, rec, pre = self.spec, self.record, f"blocks.{i}."
        b, t, d = x.shape
        h = sign(x)
        heads = {}
        for part in ("q", "k", "v"):
            y = linear_out(h, getattr(blk, part))
            rec(pre + part, y)
            heads[part] = sign(y).reshape(b, t, s.heads, d // s.heads).transpose(1, 2)
        scores = heads["q"] @ heads["k"].transpose(-1, -2)
        attn = bool_map(scores, 1.0 / math.sqrt(s.head_dim)) * mask[:, None, None, :].to(x.dtype)
        ctx = (attn @ heads["v"]).transpose(1, 2).reshape(b, t, d)
        proj = linear_out(sign(ctx, CTX_WINDOW), blk.proj)
        rec(pre + "proj", proj)
        r = x + proj
        rec(pre + "res1", r)
        x = _ln(r, blk.ln1)
        rec(pre + "ln1_out", x)
        g = sign(linear_out(sign(x), blk.fc1))  # sign(GELU(h)) = sign(h): the sign of the first FFN linear
        f = linear_out(g, blk.fc2)
        rec(pre + "fc2", f)
        r = x + f
        rec(pre + "res2", r)
        x = _ln(r, blk.ln2)
        rec(pre + "ln2_out", x)
        return x


# ------------------------------------------------------------------ the plan and its program
@dataclass
class BinaryPlan(QuantPlan):
    """A binarized encoder: the (latent) weights in ``spec`` and an int16 grid for each residual point."""

    def lower(self) -> IntegerProgram:
        return lower_binary(self)

    def forward(self) -> BinaryForward:
        """The float forward of the binarized model (the paper protocol of a binary method)."""
        return BinaryForward(self.spec)


def calibrate(spec: Transformer, batches, method: str, *, progress: bool = True) -> BinaryPlan:
    """Int16 symmetric grids of the residual points from their largest magnitude over ``batches`` in the
    binarized forward."""
    from tqdm import tqdm

    amax: dict[str, float] = {}

    def record(name: str, x: torch.Tensor) -> None:
        if name.rsplit(".", 1)[-1] in ("embed_ln",) + BLOCK_POINTS:
            amax[name] = max(amax.get(name, 0.0), float(x.detach().abs().max()))

    fwd = BinaryForward(spec, record)
    with torch.no_grad():
        for inputs, _ in tqdm(list(batches), desc=f"calibrate ({method})", disable=not progress, leave=False):
            fwd(inputs)
    acts = {name: qparams_from_range(-a, a, widths.RESIDUAL_BITS, True) for name, a in amax.items()}
    return BinaryPlan(spec=spec, method=method, wbits=1, abits=1, acts=acts, weight_scales={})


class _BinaryBuilder(_Builder):
    def bits(self, name: str, shape: tuple) -> str:
        return self.tensor(name, 1, shape, signed=False)

    def binarize(self, name: str, x: str, threshold) -> str:
        y = self.bits(name, self.shape(x))
        self.op("binarize", name + ".sign", [x], [y], {},
                {"threshold": np.atleast_1d(np.asarray(threshold, dtype=np.int64)).astype(np.int32)})
        return y

    def binary_linear(self, name: str, x_bits: str, lin, with_bias: bool) -> tuple[str, np.ndarray]:
        """``sign(W) . x_bits`` (xnor), with ``round(b / alpha)`` as its bias if ``with_bias``; returns the
        accumulator and the per-channel scale ``alpha``."""
        alpha = weight_scale(lin.w.double()).numpy()
        params = {"weight": (lin.w >= 0).numpy().astype(np.uint8)}
        if with_bias:
            bias = np.round(lin.b.double().numpy() / alpha)
            params["bias"] = np.clip(bias, *intops.int_range(widths.ACC_BITS)).astype(np.int32)
        acc = self.tensor(name + ".acc", widths.ACC_BITS, self.shape(x_bits)[:-1] + (lin.w.shape[0],))
        self.op("binary_linear", name, [x_bits], [acc], {"mode": "xnor"}, params)
        return acc, alpha

    def linear_sign(self, name: str, x_bits: str, lin) -> str:
        """``sign(alpha * acc + b)`` as the exact compare ``acc >= ceil(-b / alpha)``."""
        acc, alpha = self.binary_linear(name, x_bits, lin, with_bias=False)
        threshold = np.ceil(-lin.b.double().numpy() / alpha)
        return self.binarize(name, acc, np.clip(threshold, *intops.int_range(widths.ACC_BITS)))

    def linear_residual(self, name: str, x_bits: str, lin, out: QParams) -> str:
        acc, alpha = self.binary_linear(name, x_bits, lin, with_bias=True)
        return self.requant(name + ".requant", acc, alpha, out, name + ".out")

    def add_norm(self, pre: str, n: str, x: str, x_qp: QParams, y: str, y_point: str, norm) -> tuple[str, QParams]:
        """Post-LN: the residual add ``res<n>`` of ``x`` and the branch output ``y`` (at point ``y_point``), then
        LayerNorm ``ln<n>_out``; returns its output and grid."""
        acts = self.plan.acts
        r = self.add(pre + "res" + n, x, x_qp.scale, y, acts[pre + y_point].scale, acts[pre + "res" + n])
        out = acts[pre + f"ln{n}_out"]
        return self.layernorm(pre + f"ln{n}_out", r, norm, out, acts[pre + "res" + n].scale), out

    def attention(self, pre: str, h_bits: str, blk, mask: str) -> str:
        spec = self.plan.spec
        heads = {}
        for part in ("q", "k", "v"):
            y = self.linear_sign(pre + part, h_bits, getattr(blk, part))
            hs = self.bits(pre + part + ".heads", (spec.heads, self.shape(y)[0], spec.head_dim))
            self.op("split_heads", pre + part + ".split", [y], [hs], {"heads": spec.heads})
            heads[part] = hs
        tq = self.shape(heads["q"])[1]
        scores = self.tensor(pre + "scores.acc", widths.ACC_BITS, (spec.heads, tq, tq))
        self.op("binary_matmul", pre + "scores", [heads["q"], heads["k"]], [scores],
                {"mode": "xnor", "transpose_b": True})
        amap = self.bits(pre + "probs", (spec.heads, tq, tq))
        self.op("bi_attention", pre + "bi_attention", [scores, mask], [amap], {"threshold": 0})
        ctx = self.tensor(pre + "context.acc", widths.ACC_BITS, self.shape(heads["v"]))
        self.op("binary_matmul", pre + "context", [amap, heads["v"]], [ctx], {"mode": "and", "transpose_b": False})
        merged = self.tensor(pre + "context.merged", widths.ACC_BITS, (tq, spec.dim))
        self.op("merge_heads", pre + "context.merge", [ctx], [merged])
        o = self.binarize(pre + "attn", merged, 0)
        return self.linear_residual(pre + "proj", o, blk.proj, self.plan.acts[pre + "proj"])


def lower_binary(plan: BinaryPlan) -> IntegerProgram:
    """The integer program of a binarized BERT encoder (inputs and output as the BERT programs have them)."""
    s, acts = plan.spec, plan.acts
    b = _BinaryBuilder(plan)
    ids = b.tensor("input_ids", 32, (T,))
    types = b.tensor("token_type_ids", 8, (T,)) if s.type_emb is not None else None
    mask = b.tensor("attention_mask", 1, (T,), signed=False)
    inputs = [b.tensors[n] for n in (ids, types, mask) if n is not None]
    b.tensor("positions", 32, (T,))
    alpha = weight_scale(s.word.double())
    tables = [("position", "positions", s.pos_emb)] + ([("token_type", types, s.type_emb)] if types else [])
    # one grid for the three: their sum must fit int16 without saturating
    amax = float(alpha.max()) + sum(float(t.abs().max()) for _, _, t in tables)
    tab = QParams(amax / intops.int_range(widths.RESIDUAL_BITS)[1], 0, widths.RESIDUAL_BITS)
    word = b.tensor("embed.word", tab.bits, (T, s.dim), tab)
    b.op("binary_embedding", "embed.word", [ids], [word], {"out_bits": tab.bits},
         {"bits": (s.word >= 0).numpy().astype(np.uint8), "scale": tab.quantize(alpha).astype(np.int16)})
    e = word
    for j, (name, src, table) in enumerate(tables, 1):  # added one after the other on the one grid
        y = b.tensor(f"embed.{name}", tab.bits, (T, s.dim), tab)
        b.op("embedding", f"embed.{name}", [src], [y], {"out_bits": tab.bits},
             {"table": tab.quantize(table).astype(np.int32)})
        e = b.add("embed" if j == len(tables) else f"embed.sum{j}", e, tab.scale, y, tab.scale, tab)
    x_qp = acts["embed_ln"]
    x = b.layernorm("embed_ln", e, s.emb_norm, x_qp, tab.scale)
    for i, blk in enumerate(s.blocks):
        pre = f"blocks.{i}."
        a = b.attention(pre, b.binarize(pre + "in", x, 0), blk, mask)
        x, x_qp = b.add_norm(pre, "1", x, x_qp, a, "proj", blk.ln1)
        g = b.linear_sign(pre + "fc1", b.binarize(pre + "ln2", x, 0), blk.fc1)
        x, x_qp = b.add_norm(pre, "2", x, x_qp, b.linear_residual(pre + "fc2", g, blk.fc2, acts[pre + "fc2"]),
                             "fc2", blk.ln2)
    pooled = b.tensor("pool", x_qp.bits, (s.dim,), x_qp)
    b.op("mean_pool", "pool", [x, mask], [pooled])
    return b.program(inputs, [pooled])


# ------------------------------------------------------------------ a spec's tensors by name (the trained checkpoint)
def spec_tensors(spec: Transformer) -> dict[str, torch.Tensor]:
    """Every tensor of a BERT spec by a stable name: embeddings, their LayerNorm, each block's linears and norms."""
    out = {"word": spec.word, "pos_emb": spec.pos_emb, "emb_norm.g": spec.emb_norm.g, "emb_norm.b": spec.emb_norm.b}
    if spec.type_emb is not None:
        out["type_emb"] = spec.type_emb
    for i, blk in enumerate(spec.blocks):
        for part in ("q", "k", "v", "proj", "fc1", "fc2"):
            lin = getattr(blk, part)
            out[f"blocks.{i}.{part}.w"], out[f"blocks.{i}.{part}.b"] = lin.w, lin.b
        for part in ("ln1", "ln2"):
            norm = getattr(blk, part)
            out[f"blocks.{i}.{part}.g"], out[f"blocks.{i}.{part}.b"] = norm.g, norm.b
    return out


def load_tensors(spec: Transformer, tensors: dict[str, torch.Tensor]) -> Transformer:
    """A copy of ``spec`` holding ``tensors`` (names of :func:`spec_tensors`); a missing or misshapen one is
    one QuantError naming it."""
    out = spec.copy()
    for name, t in spec_tensors(out).items():
        if name not in tensors or tensors[name].shape != t.shape:
            got = "missing" if name not in tensors else f"shape {tuple(tensors[name].shape)}"
            raise QuantError(f"binary student checkpoint: tensor {name!r} {got}, expected {tuple(t.shape)}")
        t.copy_(tensors[name])
    return out


# ------------------------------------------------------------------ the methods
@register_method("sign", listed=False)
def sign_method(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites=None) -> BinaryPlan:
    """Plain sign() binarization of the FP32 weights and activations (BiBERT's straightforward baseline);
    the widths are 1 bit whatever WnAn asks."""
    _no_sites("sign", sites)
    return calibrate(spec, batches, "sign", progress=progress)


@register_method("bibert", listed=False)
def bibert_method(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites=None) -> BinaryPlan:
    """BiBERT: the binarized student that ``ptq2rtl.bibert`` trained from this FP32 spec (the flows hand it in
    as ``spec.extra["bibert_student"]``); the widths are 1 bit whatever WnAn asks."""
    _no_sites("bibert", sites)
    student = spec.extra.get("bibert_student")
    if student is None:
        raise QuantError(f"{spec.name}: bibert needs its trained binary student (ptq2rtl train bibert-minilm, "
                         f"or quantize through ptq2rtl, which trains or loads it)")
    return calibrate(student, batches, "bibert", progress=progress)


def _no_sites(method: str, sites) -> None:
    if sites:
        raise QuantError(f"{method} binarizes every linear (1 bit): per-site widths do not apply")
