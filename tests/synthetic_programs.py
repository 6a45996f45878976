"""Synthetic IntegerPrograms shaped like quant.lower's output, for cost-model tests (no torch, no calibration).

The op sequence mirrors ``quant/lower.py``: patch embedding (8-bit unsigned
image), class token, position constant, pre-LN blocks with separate q / k / v
linears, head-wise scores -> requant -> log2 softmax -> log2 P.V, merge,
projection, residual adds into an int16 stream, fc1 -> requant to the 8-bit
GELU input -> GELU ROM -> fc2, and a BERT-style text encoder with run-time
token count, attention mask and mean pooling. Values are random but in range.
"""

from __future__ import annotations

import numpy as np

from sim import intops, widths
from sim.program import IntegerProgram, Op, TensorSpec, validate

RES = widths.RESIDUAL_BITS
ACC = widths.ACC_BITS


class _B:
    def __init__(self, wbits: int, abits: int, pow2: bool, seed: int, sqrt2: bool = False):
        self.wbits, self.abits, self.pow2, self.sqrt2 = wbits, abits, pow2, sqrt2
        self.rng = np.random.default_rng(seed)
        self.tensors: dict[str, TensorSpec] = {}
        self.ops: list[Op] = []

    def t(self, name, bits, shape, signed=True):
        self.tensors[name] = TensorSpec(name, bits, signed, tuple(shape))
        return name

    def op(self, kind, name, ins, outs, attrs=None, params=None):
        self.ops.append(Op(kind, name, ins, outs, attrs or {}, params or {}))

    def shape(self, name):
        return self.tensors[name].shape

    def requant(self, name, x, bits, out=None, signed=True):
        ch = self.shape(x)[-1] if self.shape(x)[-1] is not None else 1
        m = np.ones(ch, np.int32) if self.pow2 else self.rng.integers(1 << 14, 1 << 15, ch).astype(np.int32)
        shift = self.rng.integers(8, 20, ch).astype(np.int32)
        y = self.t(out or name, bits, self.shape(x), signed)
        self.op("requant", name, [x], [y], {"out_bits": bits, "signed": signed, "zero_point": 0, "pow2": self.pow2},
                {"m": m, "shift": shift})
        return y

    def linear(self, name, x, n, requant_bits=None, abits=None):
        k = self.shape(x)[-1]
        lo, hi = intops.int_range(self.wbits)
        w = self.rng.integers(lo, hi + 1, (n, k), dtype=np.int8)
        acc = self.t(name + ".acc", ACC, self.shape(x)[:-1] + (n,))
        self.op("linear", name, [x], [acc], {"wbits": self.wbits, "abits": abits or self.abits},
                {"weight": w, "bias": self.rng.integers(-1000, 1000, n).astype(np.int32)})
        if requant_bits is None:
            return acc
        return self.requant(name + ".requant", acc, requant_bits, name + ".out")

    def layernorm(self, name, x, bits):
        d = self.shape(x)[-1]
        y = self.t(name, bits, self.shape(x))
        self.op("layernorm", name, [x], [y], {"shift": 12, "out_bits": bits, "frac_bits": widths.LN_NORM_FRAC_BITS},
                {"gamma": np.full(d, 1 << 10, np.int32), "beta": np.zeros(d, np.int32)})
        return y

    def add(self, name, a, b):
        ma, mb = (1 << 12, 1 << 13) if self.pow2 else (3000, 5000)
        y = self.t(name, RES, self.shape(a))
        self.op("add", name, [a, b], [y], {"ma": ma, "mb": mb, "shift": 12, "out_bits": RES})
        return y

    def block(self, pre, x, dim, heads, hidden, mask=None):
        t = self.shape(x)[0]
        h = self.layernorm(pre + "ln1", x, self.abits)
        hs = {}
        for part in "qkv":
            y = self.linear(pre + part, h, dim, self.abits)
            hs[part] = self.t(pre + part + ".heads", self.abits, (heads, t, dim // heads))
            self.op("split_heads", pre + part + ".split", [y], [hs[part]], {"heads": heads})
        s = self.t(pre + "scores.acc", ACC, (heads, t, t))
        self.op("matmul", pre + "scores", [hs["q"], hs["k"]], [s], {"transpose_b": True})
        s = self.requant(pre + "scores.requant", s, 16, pre + "scores.log2")
        codes = self.t(pre + "probs", 4, (heads, t, t), signed=False)
        self.op("softmax_log2", pre + "softmax", [s] + ([mask] if mask else []), [codes],
                {"code_bits": 4, "frac_bits": widths.SOFTMAX_FRAC_BITS, "sqrt2": self.sqrt2})
        ctx = self.t(pre + "context.acc", ACC, (heads, t, dim // heads))
        self.op("matmul_log2", pre + "context", [codes, hs["v"]], [ctx], {"code_bits": 4, "sqrt2": self.sqrt2})
        merged = self.t(pre + "context.merged", ACC, (t, dim))
        self.op("merge_heads", pre + "context.merge", [ctx], [merged])
        o = self.requant(pre + "attn.requant", merged, self.abits, pre + "attn")
        a = self.linear(pre + "proj", o, dim, RES)
        x = self.add(pre + "res1", x, a)
        h = self.layernorm(pre + "ln2", x, self.abits)
        g_in = self.linear(pre + "fc1", h, hidden, widths.GELU_IN_BITS)
        g = self.t(pre + "gelu", self.abits, self.shape(g_in))
        lo, hi = intops.int_range(self.abits)
        table = np.clip(np.arange(-128, 128) // 16, lo, hi).astype(np.int32)
        self.op("gelu", pre + "gelu", [g_in], [g], {"in_bits": widths.GELU_IN_BITS, "out_bits": self.abits},
                {"table": table})
        m = self.linear(pre + "fc2", g, dim, RES)
        return self.add(pre + "res2", x, m)

    def program(self, model, inputs, outputs):
        p = IntegerProgram(model, [self.tensors[n] for n in inputs], outputs, self.tensors, self.ops,
                           {"wbits": self.wbits, "abits": self.abits, "pow2": self.pow2})
        validate(p)
        return p


def vit_program(*, depth=2, dim=48, heads=3, mlp_ratio=2, img=16, patch=4, in_chans=1, classes=10,
                wbits=4, abits=4, pow2=False, sqrt2=False, seed=0, model="synthetic-vit") -> IntegerProgram:
    b = _B(wbits, abits, pow2, seed, sqrt2)
    x = b.t("input", 8, (in_chans, img, img), signed=False)
    n_patch = (img // patch) ** 2
    patches = b.t("patches", 8, (n_patch, in_chans * patch * patch), signed=False)
    b.op("patchify", "patchify", [x], [patches], {"patch": patch})
    e = b.linear("patch_embed", patches, dim, RES, abits=8)
    tok = b.t("tokens", RES, (n_patch + 1, dim))
    b.op("concat_token", "cls_token", [e], [tok], {}, {"token": b.rng.integers(-500, 500, dim).astype(np.int32)})
    x = b.t("embed", RES, (n_patch + 1, dim))
    b.op("add_const", "pos_embed", [tok], [x], {"out_bits": RES},
         {"const": b.rng.integers(-500, 500, (n_patch + 1, dim)).astype(np.int32)})
    for i in range(depth):
        x = b.block(f"blocks.{i}.", x, dim, heads, dim * mlp_ratio)
    cls = b.t("cls", RES, (dim,))
    b.op("select_token", "select_cls", [x], [cls], {"index": 0})
    h = b.layernorm("norm", cls, abits)
    logits = b.linear("head", h, classes)
    return b.program(model, ["input"], [logits])


def deit_small(**kw) -> IntegerProgram:
    """deit_small_patch16_224's shapes: 12 blocks, 384 wide, 6 heads, 197 tokens."""
    return vit_program(depth=12, dim=384, heads=6, mlp_ratio=4, img=224, patch=16, in_chans=3, classes=1000,
                       model="deit_small_patch16_224", **kw)


def bert_program(*, depth=2, dim=64, heads=4, hidden=128, vocab=120, wbits=4, abits=4, pow2=False, seed=0,
                 model="synthetic-bert") -> IntegerProgram:
    b = _B(wbits, abits, pow2, seed)
    ids = b.t("input_ids", 32, (None,))
    mask = b.t("attention_mask", 1, (None,), signed=False)
    b.t("positions", 32, (None,))
    parts = []
    for src, name, rows in ((ids, "word", vocab), ("positions", "position", 64)):
        y = b.t(f"embed.{name}", RES, (None, dim))
        b.op("embedding", f"embed.{name}", [src], [y], {"out_bits": RES},
             {"table": b.rng.integers(-1000, 1000, (rows, dim)).astype(np.int32)})
        parts.append(y)
    x = b.layernorm("embed_ln", b.add("embed", parts[0], parts[1]), RES)
    for i in range(depth):
        h = b.requant(f"blocks.{i}.in", x, abits)
        x = _bert_block(b, f"blocks.{i}.", x, h, dim, heads, hidden, mask)
    pooled = b.t("pool", RES, (dim,))
    b.op("mean_pool", "pool", [x, mask], [pooled])
    return b.program(model, ["input_ids", "attention_mask"], [pooled])


def _bert_block(b: _B, pre, x, h, dim, heads, hidden, mask):
    """Post-LN: the block's input requantized to abits feeds q / k / v; LayerNorms after each residual add."""
    hs = {}
    for part in "qkv":
        y = b.linear(pre + part, h, dim, b.abits)
        hs[part] = b.t(pre + part + ".heads", b.abits, (heads, None, dim // heads))
        b.op("split_heads", pre + part + ".split", [y], [hs[part]], {"heads": heads})
    s = b.t(pre + "scores.acc", ACC, (heads, None, None))
    b.op("matmul", pre + "scores", [hs["q"], hs["k"]], [s], {"transpose_b": True})
    s = b.requant(pre + "scores.requant", s, 16, pre + "scores.log2")
    codes = b.t(pre + "probs", 4, (heads, None, None), signed=False)
    b.op("softmax_log2", pre + "softmax", [s, mask], [codes], {"code_bits": 4, "frac_bits": widths.SOFTMAX_FRAC_BITS})
    ctx = b.t(pre + "context.acc", ACC, (heads, None, dim // heads))
    b.op("matmul_log2", pre + "context", [codes, hs["v"]], [ctx], {"code_bits": 4})
    merged = b.t(pre + "context.merged", ACC, (None, dim))
    b.op("merge_heads", pre + "context.merge", [ctx], [merged])
    o = b.requant(pre + "attn.requant", merged, b.abits, pre + "attn")
    a = b.linear(pre + "proj", o, dim, RES)
    x = b.layernorm(pre + "ln1_out", b.add(pre + "res1", x, a), RES)
    h = b.requant(pre + "ln2", x, b.abits)
    g_in = b.linear(pre + "fc1", h, hidden, widths.GELU_IN_BITS)
    g = b.t(pre + "gelu", b.abits, b.shape(g_in))
    lo, hi = intops.int_range(b.abits)
    b.op("gelu", pre + "gelu", [g_in], [g], {"in_bits": widths.GELU_IN_BITS, "out_bits": b.abits},
         {"table": np.clip(np.arange(-128, 128) // 16, lo, hi).astype(np.int32)})
    m = b.linear(pre + "fc2", g, dim, RES)
    return b.layernorm(pre + "ln2_out", b.add(pre + "res2", x, m), RES)


def conv_program(size: tuple[int, int] = (9, 7), channels: int = 20, out_channels: int = 24, kernel: int = 3,
                 stride: int = 1, padding: tuple[int, int, int, int] = (1, 1, 1, 1), depthwise: bool = False,
                 bits: int = 4, signed: bool = False, pad_value: int = 0, wbits: int = 4, then_depthwise: bool = False,
                 seed: int = 0) -> IntegerProgram:
    """A convolution (``depthwise``: one filter a channel) of an image ``[*size, channels]`` with its requant
    onto an unsigned 4-bit grid; ``then_depthwise``: a 3x3 depthwise convolution of that after it."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, TensorSpec] = {"x": TensorSpec("x", bits, signed, (*size, channels))}
    ops: list[Op] = []

    def conv(name, x, o, k, s, pad, groups, wb):
        h, w, c = tensors[x].shape
        out = (intops.conv_out_size(h, k, s, pad[0], pad[1]), intops.conv_out_size(w, k, s, pad[2], pad[3]), o)
        tensors[name + ".acc"] = TensorSpec(name + ".acc", ACC, True, out)
        tensors[name] = TensorSpec(name, 4, False, out)
        top = (1 << (wb - 1)) - 1
        ops.append(Op("conv2d", name, [x], [name + ".acc"],
                      {"wbits": wb, "abits": tensors[x].bits, "stride": [s, s], "padding": list(pad), "groups": groups,
                       "pad_value": pad_value if x == "x" else 0},
                      {"weight": rng.integers(-top, top + 1, (o, k, k, c // groups)).astype(np.int8),
                       "bias": rng.integers(-300, 300, o).astype(np.int32)}))
        ops.append(Op("requant", name + ".requant", [name + ".acc"], [name],
                      {"out_bits": 4, "signed": False, "zero_point": 0, "pow2": False},
                      {"m": rng.integers(1 << 14, 1 << 15, o).astype(np.int32),
                       "shift": np.full(o, 18 + tensors[x].bits + wb // 2, np.int32)}))
        return name

    y = conv("conv", "x", channels if depthwise else out_channels, kernel, stride, padding,
             channels if depthwise else 1, wbits)
    if then_depthwise:
        y = conv("dw", y, tensors[y].shape[-1], 3, 1, (1, 1, 1, 1), tensors[y].shape[-1], 4)
    program = IntegerProgram("conv-test", [tensors["x"]], [y], tensors, ops, {})
    validate(program)
    return program
