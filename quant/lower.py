"""Lowering: a QuantPlan becomes an IntegerProgram.

The walk mirrors quant.model.Forward point by point. Widths fixed by the
hardware units (stated in the README): residual stream int16, GELU unit input
int8, softmax input int16 in log2 units with SOFTMAX_FRAC_BITS fractional
bits, attention probabilities as ``code_bits`` log2 codes, accumulators int32.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from quant.model import ACTIVATIONS, Norm
from quant.plan import QuantPlan
from quant.quantizers import QParams, QuantError
from sim import intops, widths
from sim.program import IntegerProgram, Op, TensorSpec, validate

T = None  # a token dimension fixed at run time


class _Builder:
    def __init__(self, plan: QuantPlan):
        self.plan = plan
        self.tensors: dict[str, TensorSpec] = {}
        self.ops: list[Op] = []

    def tensor(self, name: str, bits: int, shape: tuple, qp: QParams | None = None, signed: bool = True,
               scale: float | None = None) -> str:
        self.tensors[name] = TensorSpec(name, bits, signed, tuple(shape), qp.scale if qp else scale,
                                        qp.zero_point if qp else 0)
        return name

    def op(self, kind: str, name: str, inputs: list[str], outputs: list[str], attrs: dict | None = None,
           params: dict | None = None) -> None:
        self.ops.append(Op(kind, name, inputs, outputs, attrs or {}, params or {}))

    def shape(self, name: str) -> tuple:
        return self.tensors[name].shape

    # ---------------------------------------------------------------- units
    def requant(self, name: str, x: str, in_scale, out: QParams, out_name: str | None = None) -> str:
        """Requantize ``x`` (real = in_scale * x, per channel or per tensor) onto the grid ``out``.

        Where the output is a point with a channel map (x / r + delta), the map
        becomes per-channel multipliers and zero points.
        """
        y_name = out_name or name
        if self.tensors[x].zero_point != 0:
            raise QuantError(f"{name}: a requantizer input must have zero point 0, {x!r} has {self.tensors[x].zero_point}")
        in_scale = np.atleast_1d(np.asarray(in_scale, dtype=np.float64))
        params = {}
        if y_name in self.plan.channel_maps:
            ratio, delta = (t.double().numpy() for t in self.plan.channel_maps[y_name])
            in_scale = in_scale / ratio
            zps = out.zero_point + np.round(delta / out.scale).astype(np.int64)
            params["zero_points"] = np.clip(zps, out.qmin, out.qmax).astype(np.int32)
        m, shift = self.plan.multipliers(in_scale / out.scale)
        y = self.tensor(y_name, out.bits, self.shape(x), out)
        self.op("requant", name, [x], [y],
                {"out_bits": out.bits, "signed": True, "zero_point": out.zero_point, "pow2": self.plan.pow2},
                {"m": m.astype(np.int32), "shift": shift.astype(np.int32), **params})
        return y

    def linear(self, name: str, x: str, lin, x_qp: QParams) -> tuple[str, np.ndarray]:
        """MAC array op; returns the int32 accumulator and its per-channel scale ``s_x * s_w``."""
        wq = self.plan.int_weight(name, lin.w)
        s_w = self.plan.weight_scales[name].double().numpy()
        s_acc = x_qp.scale * s_w
        bias = np.round(lin.b.double().numpy() / s_acc).astype(np.int64) - x_qp.zero_point * wq.sum(axis=1)
        acc = self.tensor(name + ".acc", widths.ACC_BITS, self.shape(x)[:-1] + (wq.shape[0],), scale=None)
        self.op("linear", name, [x], [acc], {"wbits": self.plan.wbits_of(name), "abits": x_qp.bits},
                {"weight": wq.astype(np.int8), "bias": np.clip(bias, *intops.int_range(32)).astype(np.int32)})
        return acc, s_acc

    def linear_to(self, name: str, x: str, lin, x_qp: QParams, out: QParams) -> str:
        acc, s_acc = self.linear(name, x, lin, x_qp)
        return self.requant(name + ".requant", acc, s_acc, out, name + ".out")

    def add(self, name: str, a: str, sa: float, b: str, sb: float, out: QParams) -> str:
        """Residual add: both operands brought onto ``out``'s grid by ``ma``, ``mb`` and one shift."""
        ra, rb = sa / out.scale, sb / out.scale
        if self.plan.pow2:
            shift = max(0, -int(round(math.log2(min(ra, rb)))))
            ma, mb = (int(round(r * 2 ** shift)) for r in (ra, rb))
        else:
            shift = min(62, 15 - math.ceil(math.log2(max(ra, rb))))
            if shift < 0:
                raise QuantError(f"{name}: residual scales differ by more than 2**15")
            ma, mb = (int(round(r * 2 ** shift)) for r in (ra, rb))
        y = self.tensor(name, out.bits, self.shape(a), out)
        self.op("add", name, [a, b], [y], {"ma": ma, "mb": mb, "shift": shift, "out_bits": out.bits})
        return y

    def layernorm(self, name: str, x: str, norm: Norm, out: QParams, x_scale: float) -> str:
        """n = (x - mean) / std with F fractional bits; y = (n*G + B) >> shift with G = gamma / (s_y 2**F) 2**shift.

        A channel map on the output (x / r + delta) folds into gamma and beta; power-of-two
        factors on the input (FQ-ViT) put a requantizer to the narrow LN input in front.
        """
        frac = widths.LN_NORM_FRAC_BITS
        gamma_f, beta_f = norm.g.double().numpy(), norm.b.double().numpy()
        if name in self.plan.channel_maps:
            ratio, delta = (t.double().numpy() for t in self.plan.channel_maps[name])
            gamma_f, beta_f = gamma_f / ratio, beta_f / ratio + delta
        params = {}
        if name in self.plan.ln_ptf:
            grid, alpha = self.plan.ln_ptf[name]
            alpha = alpha.to(torch.int64).numpy()
            narrow = QParams(grid.scale, 0, grid.bits)
            x = self.requant(name + ".ln_in", x, x_scale / 2.0 ** alpha, narrow)
            params["in_shift"] = alpha.astype(np.int32)
        g = gamma_f / out.scale / (1 << frac)
        b = beta_f / out.scale + out.zero_point
        gmax = max(np.abs(g).max(), 1e-12)
        shift = int(np.clip(math.floor(math.log2(((1 << 15) - 1) / gmax)), 0, 40))
        while shift > 0 and np.abs(b).max() * 2 ** shift >= 2 ** 31 - 2 ** 16:
            shift -= 1
        gamma = np.round(g * 2 ** shift).astype(np.int64)
        beta = np.round(b * 2 ** shift).astype(np.int64)
        y = self.tensor(name, out.bits, self.shape(x), out)
        self.op("layernorm", name, [x], [y], {"shift": shift, "out_bits": out.bits, "frac_bits": frac},
                {"gamma": gamma.astype(np.int32), "beta": np.clip(beta, *intops.int_range(32)).astype(np.int32),
                 **params})
        return y

    # ---------------------------------------------------------------- blocks
    def attention(self, pre: str, h: str, h_qp: QParams, blk, mask: str | None) -> str:
        acts, spec, cb = self.plan.acts, self.plan.spec, self.plan.code_bits
        n_heads = spec.heads_of(blk)
        heads = {}
        for part in ("q", "k", "v"):
            y = self.linear_to(pre + part, h, getattr(blk, part), h_qp, acts[pre + part])
            hs = self.tensor(pre + part + ".heads", acts[pre + part].bits,
                             (n_heads, self.shape(y)[0], spec.head_dim), acts[pre + part])
            self.op("split_heads", pre + part + ".split", [y], [hs], {"heads": n_heads})
            heads[part] = hs
        tq = self.shape(heads["q"])[1]
        acc = self.tensor(pre + "scores.acc", widths.ACC_BITS, (n_heads, tq, tq))
        self.op("matmul", pre + "scores", [heads["q"], heads["k"]], [acc], {"transpose_b": True})
        f = widths.SOFTMAX_FRAC_BITS
        s_scores = acts[pre + "q"].scale * acts[pre + "k"].scale * blk.attn_scale
        t_qp = QParams(1.0 / (math.log2(math.e) * (1 << f)), 0, widths.SOFTMAX_IN_BITS)  # log2 units, f fractional bits
        t = self.requant(pre + "scores.requant", acc, s_scores, t_qp, pre + "scores.log2")
        ctx = self.tensor(pre + "context.acc", widths.ACC_BITS, self.shape(heads["v"]))
        scores = [t] + ([mask] if mask else [])
        if pre in self.plan.softmax_tulq:  # levels on a 2**-grid_bits grid, then an ordinary product with V
            knee, step_bits, grid_bits, sqrt2 = self.plan.softmax_tulq[pre]
            probs = self.tensor(pre + "probs", grid_bits + 1, self.shape(t), signed=False)
            self.op("softmax_tulq", pre + "softmax", scores, [probs],
                    {"knee": knee, "step_bits": step_bits, "grid_bits": grid_bits, "frac_bits": f, "sqrt2": sqrt2})
            self.op("matmul", pre + "context", [probs, heads["v"]], [ctx], {"transpose_b": False})
            s_ctx = acts[pre + "v"].scale * 2.0 ** -grid_bits
        else:
            codes = self.tensor(pre + "probs", cb, self.shape(t), signed=False)
            sqrt2 = self.plan.sqrt2_at(pre)
            self.op("softmax_log2", pre + "softmax", scores, [codes], {"code_bits": cb, "frac_bits": f, "sqrt2": sqrt2})
            self.op("matmul_log2", pre + "context", [codes, heads["v"]], [ctx], {"code_bits": cb, "sqrt2": sqrt2})
            s_ctx = acts[pre + "v"].scale * 2.0 ** -intops.log2_acc_shift(cb, sqrt2)
        merged = self.tensor(pre + "context.merged", widths.ACC_BITS, (tq, n_heads * spec.head_dim))
        self.op("merge_heads", pre + "context.merge", [ctx], [merged])
        o = self.requant(pre + "attn.requant", merged, s_ctx, acts[pre + "attn"], pre + "attn")
        return self.linear_to(pre + "proj", o, blk.proj, acts[pre + "attn"], acts[pre + "proj"])

    def mlp(self, pre: str, h: str, h_qp: QParams, blk) -> str:
        acts = self.plan.acts
        g_in = self.linear_to(pre + "fc1", h, blk.fc1, h_qp, acts[pre + "fc1"])
        point = pre + "gelu"
        # with a channel map the ROM writes a wide per-tensor grid, and a per-channel requant narrows it
        rom = acts[point + ".rom"] if point in self.plan.channel_maps else acts[point]
        name = point + ".rom" if point in self.plan.channel_maps else point
        g = self.tensor(name, rom.bits, self.shape(g_in), rom)
        self.op("gelu", point, [g_in], [g], {"in_bits": widths.GELU_IN_BITS, "out_bits": rom.bits},
                {"table": gelu_table(acts[pre + "fc1"], rom, self.plan.spec.act).astype(np.int32)})
        if point in self.plan.channel_maps:
            g = self.requant(point + ".requant", g, rom.scale, acts[point], point)
        return self.linear_to(pre + "fc2", g, blk.fc2, acts[point], acts[pre + "fc2"])

    def program(self, inputs: list[TensorSpec], outputs: list[str]) -> IntegerProgram:
        p = self.plan
        meta = {"method": p.method, "wbits": p.wbits, "abits": p.abits, "code_bits": p.code_bits, "pow2": p.pow2,
                "family": p.spec.family, "residual_bits": widths.RESIDUAL_BITS, "gelu_in_bits": widths.GELU_IN_BITS,
                **p.meta}
        program = IntegerProgram(p.spec.name, inputs, outputs, self.tensors, self.ops, meta)
        validate(program)  # a lowering bug is named here, not deep inside the engine
        return program


def gelu_table(x_qp: QParams, y_qp: QParams, act: str = "gelu") -> np.ndarray:
    """The GELU ROM: every int8 input code mapped to the nearest output level of the activation ``act`` on
    the grid ``y_qp`` (a key of quant.model.ACTIVATIONS; computed once, in float64)."""
    lo, hi = intops.int_range(widths.GELU_IN_BITS)
    codes = torch.arange(lo, hi + 1, dtype=torch.float64)
    return y_qp.quantize(ACTIVATIONS[act](x_qp.scale * (codes - x_qp.zero_point)))


def _const(x: torch.Tensor, qp: QParams) -> np.ndarray:
    return qp.quantize(x).astype(np.int32)


def lower(plan: QuantPlan) -> IntegerProgram:
    """Emit the integer program of a plan (ViT/DeiT, Swin, BERT, or a CNN's)."""
    if plan.spec.family == "cnn":
        from quant.cnn import lower as lower_cnn

        return lower_cnn(plan)
    if plan.spec.family == "swin":
        from quant.swin import lower_swin

        return lower_swin(plan)
    return _lower_vit(plan) if plan.spec.family == "vit" else _lower_bert(plan)


def _lower_vit(plan: QuantPlan) -> IntegerProgram:
    s, acts = plan.spec, plan.acts
    b = _Builder(plan)
    in_qp = acts["input"]
    x = b.tensor("input", in_qp.bits, (s.in_chans, s.img_size, s.img_size), in_qp)
    inputs = [b.tensors[x]]
    n_patch = (s.img_size // s.patch) ** 2
    patches = b.tensor("patches", in_qp.bits, (n_patch, s.in_chans * s.patch * s.patch), in_qp)
    b.op("patchify", "patchify", [x], [patches], {"patch": s.patch})
    e_qp = acts["embed"]
    x = b.linear_to("patch_embed", patches, s.patch_embed, in_qp, e_qp)
    tok = b.tensor("tokens", e_qp.bits, (n_patch + 1, s.dim), e_qp)
    b.op("concat_token", "cls_token", [x], [tok], {}, {"token": _const(s.cls, e_qp)})
    x = b.tensor("embed", e_qp.bits, (n_patch + 1, s.dim), e_qp)
    b.op("add_const", "pos_embed", [tok], [x], {"out_bits": e_qp.bits}, {"const": _const(s.pos, e_qp)})
    x_qp = e_qp
    for i, blk in enumerate(s.blocks):
        pre = f"blocks.{i}."
        h = b.layernorm(pre + "ln1", x, blk.ln1, acts[pre + "ln1"], x_qp.scale)
        a = b.attention(pre, h, acts[pre + "ln1"], blk, None)
        x = b.add(pre + "res1", x, x_qp.scale, a, acts[pre + "proj"].scale, acts[pre + "res1"])
        h = b.layernorm(pre + "ln2", x, blk.ln2, acts[pre + "ln2"], acts[pre + "res1"].scale)
        m = b.mlp(pre, h, acts[pre + "ln2"], blk)
        x = b.add(pre + "res2", x, acts[pre + "res1"].scale, m, acts[pre + "fc2"].scale, acts[pre + "res2"])
        x_qp = acts[pre + "res2"]
    cls = b.tensor("cls", x_qp.bits, (s.dim,), x_qp)
    b.op("select_token", "select_cls", [x], [cls], {"index": 0})
    h = b.layernorm("norm", cls, s.norm, acts["norm"], x_qp.scale)
    logits, s_acc = b.linear("head", h, s.head, acts["norm"])
    return b.program(inputs, [logits])


def _lower_bert(plan: QuantPlan) -> IntegerProgram:
    s, acts = plan.spec, plan.acts
    b = _Builder(plan)
    ids = b.tensor("input_ids", 32, (T,))
    types = b.tensor("token_type_ids", 8, (T,)) if s.type_emb is not None else None  # DistilBERT has none
    mask = b.tensor("attention_mask", 1, (T,), signed=False)
    inputs = [b.tensors[n] for n in (ids, types, mask) if n is not None]
    b.tensor("positions", 32, (T,))
    tables = [(ids, "word", s.word), ("positions", "position", s.pos_emb)]
    tables += [(types, "token_type", s.type_emb)] if types is not None else []
    # one grid for the tables: their sum must fit int16 without saturating
    amax = float(sum(table.abs().max() for _, _, table in tables))
    tab_qp = QParams(amax / intops.int_range(widths.RESIDUAL_BITS)[1], 0, widths.RESIDUAL_BITS)
    parts = []
    for src, name, table in tables:
        y = b.tensor(f"embed.{name}", tab_qp.bits, (T, s.dim), tab_qp)
        b.op("embedding", f"embed.{name}", [src], [y], {"out_bits": tab_qp.bits}, {"table": _const(table, tab_qp)})
        parts.append(y)
    one = QParams(tab_qp.scale, 0, tab_qp.bits)
    e = b.add("embed.sum1" if len(parts) > 2 else "embed", parts[0], one.scale, parts[1], one.scale, one)
    if len(parts) > 2:
        e = b.add("embed", e, one.scale, parts[2], one.scale, one)
    x_qp = acts["embed_ln"]
    x = b.layernorm("embed_ln", e, s.emb_norm, x_qp, one.scale)
    for i, blk in enumerate(s.blocks):
        pre = f"blocks.{i}."
        h = b.requant(pre + "in", x, x_qp.scale, acts[pre + "in"])
        a = b.attention(pre, h, acts[pre + "in"], blk, mask)
        r = b.add(pre + "res1", x, x_qp.scale, a, acts[pre + "proj"].scale, acts[pre + "res1"])
        x = b.layernorm(pre + "ln1_out", r, blk.ln1, acts[pre + "ln1_out"], acts[pre + "res1"].scale)
        h = b.requant(pre + "ln2", x, acts[pre + "ln1_out"].scale, acts[pre + "ln2"])
        m = b.mlp(pre, h, acts[pre + "ln2"], blk)
        r = b.add(pre + "res2", x, acts[pre + "ln1_out"].scale, m, acts[pre + "fc2"].scale, acts[pre + "res2"])
        x_qp = acts[pre + "ln2_out"]
        x = b.layernorm(pre + "ln2_out", r, blk.ln2, x_qp, acts[pre + "res2"].scale)
    pooled = b.tensor("pool", x_qp.bits, (s.dim,), x_qp)
    b.op("mean_pool", "pool", [x, mask], [pooled])
    return b.program(inputs, [pooled])
