"""Swin Transformer (timm's ``SwinTransformer``): its adapter, float forward and integer lowering.

Swin is a pre-LN transformer like ViT, so its blocks reuse the neutral
:class:`quant.model.Block` (same points, same linears, same methods), with
what makes Swin different as data on a :class:`SwinBlock`:

* window attention: the tokens of a block are gathered into windows of N
  tokens (an index table, ``windows``), attention runs per window and head,
  and the result is gathered back (``unwindows``);
* shifted windows: the same tables with the cyclic shift and the padding to
  whole windows built in; a padded token carries a real 0, as in timm; the
  tokens of a shifted window that came from different image regions do not
  attend to each other (``regions``: a region id per window token);
* the relative position bias: one [heads, N, N] table per block, added to
  the scores before the softmax;
* patch merging at the start of a stage: a gather concatenating each 2x2
  neighbourhood (``merge_index``), a LayerNorm and a linear reduction;
* the head: final LayerNorm, the mean over all tokens, the classifier.

The float forward and the lowering read the same index tables, so the graph
they describe is one. In the integer program the gathers are ``gather_rows``
ops (the values move, none changes; a padded row is the code of a real 0 on
its grid), the bias is rounded onto the softmax input's log2 grid and added
by the softmax unit with saturation, the regions become a per-key comparison
in the softmax unit, and the pooling is ``mean_pool`` over all rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quant.model import Block, Forward, Linear, Norm, Transformer, _lin, _ln, _norm, _split
from quant.quantizers import QParams, QuantError
from sim import intops, widths
from sim.program import IntegerProgram, TensorSpec


@dataclass
class SwinBlock(Block):
    heads: int = 0  #: attention heads (Swin's differ from stage to stage); every field is set by the adapter
    windows: torch.Tensor | None = None  #: [nW, N, 1] the block's token in each window place, -1 for padding
    unwindows: torch.Tensor | None = None  #: [L, 1] each token's place in the windows, flattened
    rel_bias: torch.Tensor | None = None  #: [heads, N, N] added to the scores (nats)
    regions: torch.Tensor | None = None  #: [nW, N] region id of each window token (shifted blocks)
    merge: Linear | None = None  #: patch merging's reduction in front of the block (a stage's first)
    merge_norm: Norm | None = None
    merge_index: torch.Tensor | None = None  #: [L', 4] the 2x2 neighbours concatenated, -1 for padding


# ------------------------------------------------------------------ index tables
def _pad(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.pad(grid, ((0, h - grid.shape[0]), (0, w - grid.shape[1])), constant_values=-1)


def _partition(grid: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """[Hp, Wp] -> [windows, wh * ww], windows in row-major order, tokens row-major inside each."""
    (hp, wp), (wh, ww) = grid.shape, window
    return grid.reshape(hp // wh, wh, wp // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)


def window_rows(res: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """[nW, N]: the token (row-major over ``res``) in each window place after the cyclic shift by
    ``-shift``, padded at the bottom and right to whole windows (-1)."""
    (h, w), (wh, ww) = res, window
    grid = np.roll(np.arange(h * w).reshape(h, w), (-shift[0], -shift[1]), axis=(0, 1))
    return _partition(_pad(grid, -(-h // wh) * wh, -(-w // ww) * ww), window)


def unwindow_rows(windows: np.ndarray) -> np.ndarray:
    """[L]: the inverse of ``windows`` (each token's place in the flattened windows)."""
    flat = windows.reshape(-1)
    places = np.flatnonzero(flat >= 0)
    out = np.empty(len(places), np.int64)
    out[flat[places]] = places
    return out


def window_regions(res: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """[nW, N]: region ids of the shifted windows' tokens. After the cyclic shift the last ``window``
    rows of the padded grid hold rows from two places of the image, split at ``shift`` from the end (and
    likewise for columns): 3 x 3 regions, of which a window holds up to 4. No shift along an axis, no split."""
    def bands(n: int, win: int, s: int) -> np.ndarray:
        i = np.arange(-(-n // win) * win)
        return ((i >= len(i) - win).astype(np.int64) + (i >= len(i) - s)) * (s > 0)

    rows, cols = (bands(n, win, s) for n, win, s in zip(res, window, shift))
    return _partition(3 * rows[:, None] + cols[None, :], window)


def merge_rows(res: tuple[int, int]) -> np.ndarray:
    """[L', 4]: for each 2x2 neighbourhood (row-major over the halved grid), its tokens in the order
    (0, 0), (1, 0), (0, 1), (1, 1) as (row, column) offsets; an odd grid padded at the bottom and right."""
    h, w = res
    grid = _pad(np.arange(h * w).reshape(h, w), h + h % 2, w + w % 2)
    return grid.reshape(grid.shape[0] // 2, 2, grid.shape[1] // 2, 2).transpose(0, 2, 3, 1).reshape(-1, 4)


def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The float twin of ``gather_rows``: ``x`` [B, ..., C] as rows, ``index`` [..., k] (-1: a zero row)."""
    b, c = x.shape[0], x.shape[-1]
    rows = x.reshape(b, -1, c)
    rows = torch.cat([rows, rows.new_zeros(b, 1, c)], dim=1)
    idx = torch.where(index < 0, rows.shape[1] - 1, index)
    return rows[:, idx.reshape(-1)].reshape(b, *index.shape[:-1], index.shape[-1] * c)


# ------------------------------------------------------------------ adapter
def _layernorm(m: torch.nn.Module, name: str, where: str) -> Norm:
    if not isinstance(m, torch.nn.LayerNorm):
        raise TypeError(f"{name}: {where} is {type(m).__name__}; the integer lowering supports LayerNorm")
    return _norm(m)


def from_timm_swin(model: torch.nn.Module, name: str) -> Transformer:
    """Adapter for timm's SwinTransformer (shifted-window attention, patch merging, average pooling)."""
    from timm.models.swin_transformer import PatchMerging, SwinTransformer

    if not isinstance(model, SwinTransformer):
        raise TypeError(f"{name}: the Swin lowering supports timm SwinTransformer models, got {type(model).__name__}")
    if model.global_pool != "avg" or not isinstance(model.head.fc, torch.nn.Linear):
        raise TypeError(f"{name}: the Swin lowering needs global_pool='avg' and a linear classifier")
    pe = model.patch_embed
    conv = pe.proj
    patch = conv.kernel_size
    if patch[0] != patch[1] or tuple(conv.stride) != tuple(patch) or pe.img_size[0] != pe.img_size[1]:
        raise TypeError(f"{name}: the Swin lowering needs square patches of stride = size and a square image, "
                        f"got kernel {patch}, stride {conv.stride}, image {pe.img_size}")
    dim = conv.weight.shape[0]
    emb_norm = None if isinstance(pe.norm, torch.nn.Identity) else _layernorm(pe.norm, name, "patch_embed.norm")
    res = tuple(pe.grid_size)
    blocks = []
    for si, stage in enumerate(model.layers):
        merge = {}
        if isinstance(stage.downsample, PatchMerging):
            ds = stage.downsample
            merge = dict(merge=_lin(ds.reduction), merge_norm=_layernorm(ds.norm, name, f"layers.{si}.downsample.norm"),
                         merge_index=torch.from_numpy(merge_rows(res)))
            res = ((res[0] + 1) // 2, (res[1] + 1) // 2)
        elif not isinstance(stage.downsample, torch.nn.Identity):
            raise TypeError(f"{name}: layers.{si}.downsample is {type(stage.downsample).__name__}, not PatchMerging")
        for bi, blk in enumerate(stage.blocks):
            where = f"layers.{si}.blocks.{bi}"
            if tuple(blk.input_resolution) != res:
                raise TypeError(f"{name}: {where} works on {tuple(blk.input_resolution)} tokens, expected {res}")
            if not isinstance(blk.mlp.act, torch.nn.GELU) or blk.mlp.act.approximate != "none" \
                    or not isinstance(blk.mlp.norm, torch.nn.Identity):
                raise TypeError(f"{name}: {where}.mlp must be fc1, exact GELU, fc2")
            att = blk.attn
            window, shift = tuple(blk.window_size), tuple(blk.shift_size)
            rows = window_rows(res, window, shift)
            n = rows.shape[1]
            table = att.relative_position_bias_table.detach().float()
            rel = table[att.relative_position_index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1).contiguous()
            qkv = _lin(att.qkv)
            q, k, v = (Linear(w, b) for w, b in zip(qkv.w.chunk(3), qkv.b.chunk(3)))
            blocks.append(SwinBlock(
                _layernorm(blk.norm1, name, where + ".norm1"), q, k, v, _lin(att.proj),
                _layernorm(blk.norm2, name, where + ".norm2"), _lin(blk.mlp.fc1), _lin(blk.mlp.fc2),
                float(att.scale), heads=att.num_heads, windows=torch.from_numpy(rows[..., None]),
                unwindows=torch.from_numpy(unwindow_rows(rows)[:, None]), rel_bias=rel,
                regions=torch.from_numpy(window_regions(res, window, shift)) if any(shift) else None,
                **(merge if bi == 0 else {})))
    if not blocks:
        raise TypeError(f"{name}: a Swin model without blocks")
    return Transformer(
        family="swin", name=name, dim=model.num_features, heads=blocks[0].heads, blocks=blocks,
        img_size=pe.img_size[0], in_chans=conv.weight.shape[1], patch=patch[0],
        patch_embed=Linear(conv.weight.detach().float().reshape(dim, -1).clone(), conv.bias.detach().float().clone()),
        emb_norm=emb_norm, norm=_layernorm(model.norm, name, "norm"), head=_lin(model.head.fc))


# ------------------------------------------------------------------ float forward
class SwinForward(Forward):
    """The float forward of a Swin spec, with the hooks at the same points as a ViT block's (and
    ``merge_ln`` / ``merge`` at a patch merging). ``Forward(spec)`` builds one for family "swin"."""

    def embed(self, inputs) -> tuple[torch.Tensor, None]:
        s, act = self.spec, self.act
        x = act("input", inputs)
        b, c, hh, ww = x.shape
        p = s.patch
        patches = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        x = act("embed", self.linear(patches, s.patch_embed, "patch_embed"))
        return (x if s.emb_norm is None else self.norm("embed_ln", x, s.emb_norm)), None

    def block(self, i: int, x: torch.Tensor, mask=None) -> torch.Tensor:
        act, blk, pre = self.act, self.spec.blocks[i], f"blocks.{i}."
        if blk.merge is not None:
            h = self.norm(pre + "merge_ln", gather(x, blk.merge_index), blk.merge_norm)
            x = act(pre + "merge", self.linear(h, blk.merge, pre + "merge"))
        # the windows are gathered from the LayerNorm's output, so a padded token is a real 0 at the point
        h = act(pre + "ln1", gather(_ln(act(pre + "ln1.ln_in", x), blk.ln1), blk.windows))
        x = act(pre + "res1", x + act(pre + "proj", self.window_attention(h, blk, pre)))
        h = self.norm(pre + "ln2", x, blk.ln2)
        g = act(pre + "gelu", F.gelu(act(pre + "fc1", self.linear(h, blk.fc1, pre + "fc1"))))
        return act(pre + "res2", x + act(pre + "fc2", self.linear(g, blk.fc2, pre + "fc2")))

    def window_attention(self, h: torch.Tensor, blk: SwinBlock, pre: str) -> torch.Tensor:
        """``h`` [B, nW, N, C] -> the projected attention output [B, L, C] (back in token order)."""
        act = self.act
        q, k, v = (_split(act(pre + p, self.linear(h, getattr(blk, p), pre + p)).flatten(0, 1), blk.heads)
                   for p in ("q", "k", "v"))  # [B nW, heads, N, d]
        b, nw, n = h.shape[:3]
        scores = ((q @ k.transpose(-1, -2)) * blk.attn_scale).unflatten(0, (b, nw)) + blk.rel_bias
        if blk.regions is not None:
            other = blk.regions[:, None, :, None] != blk.regions[:, None, None, :]
            scores = scores.masked_fill(other, float("-inf"))
        p = act(pre + "probs", act(pre + "scores", scores).softmax(dim=-1)).flatten(0, 1)
        o = (p @ v).transpose(1, 2).reshape(b, nw * n, -1)
        return self.linear(act(pre + "attn", gather(o, blk.unwindows)), blk.proj, pre + "proj")

    def head(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        s = self.spec
        h = self.norm("norm", x, s.norm)
        return self.act("logits", self.linear(h.mean(dim=1), s.head, "head"))


# ------------------------------------------------------------------ lowering
def _zero_codes(plan, point: str, qp: QParams, width: int) -> np.ndarray:
    """The code of a real 0 in each channel of ``point`` (its grid, or the per-channel grid of a channel map)."""
    if point not in plan.channel_maps:
        return np.full(width, qp.zero_point, np.int32)
    _, delta = plan.channel_maps[point]
    return np.clip(qp.zero_point + np.round(delta.double().numpy() / qp.scale), qp.qmin, qp.qmax).astype(np.int32)


def _gather(b, name: str, x: str, index: torch.Tensor, out: str, fill: np.ndarray | None = None) -> str:
    spec = b.tensors[x]
    idx = index.numpy().astype(np.int32)
    shape = idx.shape[:-1] + (idx.shape[-1] * b.shape(x)[-1],)
    b.tensors[out] = TensorSpec(out, spec.bits, spec.signed, shape, spec.scale, spec.zero_point)  # values only move
    params = {"index": idx}
    if idx.min() < 0:
        params["fill"] = fill
    b.op("gather_rows", name, [x], [out], {}, params)
    return out


def _window_attention(b, pre: str, h: str, h_qp: QParams, blk: SwinBlock) -> str:
    acts, cb, plan = b.plan.acts, b.plan.code_bits, b.plan
    nw, n, _ = b.shape(h)
    heads = {}
    for part in ("q", "k", "v"):
        y = b.linear_to(pre + part, h, getattr(blk, part), h_qp, acts[pre + part])
        width = b.shape(y)[-1]
        hs = b.tensor(pre + part + ".heads", acts[pre + part].bits, (nw, blk.heads, n, width // blk.heads),
                      acts[pre + part])
        b.op("split_heads", pre + part + ".split", [y], [hs], {"heads": blk.heads})
        heads[part] = hs
    acc = b.tensor(pre + "scores.acc", widths.ACC_BITS, (nw, blk.heads, n, n))
    b.op("matmul", pre + "scores", [heads["q"], heads["k"]], [acc], {"transpose_b": True})
    f = widths.SOFTMAX_FRAC_BITS
    s_scores = acts[pre + "q"].scale * acts[pre + "k"].scale * blk.attn_scale
    t_qp = QParams(1.0 / (math.log2(math.e) * (1 << f)), 0, widths.SOFTMAX_IN_BITS)  # log2 units, f fractional bits
    t = b.requant(pre + "scores.requant", acc, s_scores, t_qp, pre + "scores.log2")
    bias = np.round(blk.rel_bias.double().numpy() / t_qp.scale)
    params = {"bias": np.clip(bias, t_qp.qmin, t_qp.qmax).astype(np.int16)}
    if blk.regions is not None:
        params["regions"] = blk.regions.numpy().astype(np.int8)
    codes = b.tensor(pre + "probs", cb, b.shape(t), signed=False)
    sqrt2 = plan.sqrt2_at(pre)
    b.op("softmax_log2", pre + "softmax", [t], [codes], {"code_bits": cb, "frac_bits": f, "sqrt2": sqrt2}, params)
    ctx = b.tensor(pre + "context.acc", widths.ACC_BITS, b.shape(heads["v"]))
    b.op("matmul_log2", pre + "context", [codes, heads["v"]], [ctx], {"code_bits": cb, "sqrt2": sqrt2})
    merged = b.tensor(pre + "context.merged", widths.ACC_BITS, (nw, n, b.shape(heads["v"])[-1] * blk.heads))
    b.op("merge_heads", pre + "context.merge", [ctx], [merged])
    rows = _gather(b, pre + "unwindows", merged, blk.unwindows, pre + "context.rows")
    s_ctx = acts[pre + "v"].scale * 2.0 ** -intops.log2_acc_shift(cb, sqrt2)
    o = b.requant(pre + "attn.requant", rows, s_ctx, acts[pre + "attn"], pre + "attn")
    return b.linear_to(pre + "proj", o, blk.proj, acts[pre + "attn"], acts[pre + "proj"])


def lower_swin(plan) -> IntegerProgram:
    """The integer program of a Swin plan: patch embedding, blocks (patch merging where a stage begins),
    final LayerNorm, mean over all tokens, classifier; the logits are the int32 accumulators."""
    from quant.lower import _Builder

    if plan.softmax_tulq:
        raise QuantError(f"the Swin lowering writes log2 attention codes only; the plan asks for truncated "
                         f"uniform-log2 levels in {', '.join(sorted(plan.softmax_tulq))}")
    s, acts = plan.spec, plan.acts
    b = _Builder(plan)
    in_qp = acts["input"]
    x = b.tensor("input", in_qp.bits, (s.in_chans, s.img_size, s.img_size), in_qp)
    inputs = [b.tensors[x]]
    grid = s.img_size // s.patch
    patches = b.tensor("patches", in_qp.bits, (grid * grid, s.in_chans * s.patch * s.patch), in_qp)
    b.op("patchify", "patchify", [x], [patches], {"patch": s.patch})
    x_qp = acts["embed"]
    x = b.linear_to("patch_embed", patches, s.patch_embed, in_qp, x_qp)
    if s.emb_norm is not None:
        x = b.layernorm("embed_ln", x, s.emb_norm, acts["embed_ln"], x_qp.scale)
        x_qp = acts["embed_ln"]
    for i, blk in enumerate(s.blocks):
        pre = f"blocks.{i}."
        if blk.merge is not None:  # a padded neighbour is a real 0: the residual's zero point
            m = _gather(b, pre + "merge.gather", x, blk.merge_index, pre + "merge.rows",
                        np.full(b.shape(x)[-1], b.tensors[x].zero_point, np.int32))
            h = b.layernorm(pre + "merge_ln", m, blk.merge_norm, acts[pre + "merge_ln"], x_qp.scale)
            x_qp = acts[pre + "merge"]
            x = b.linear_to(pre + "merge", h, blk.merge, acts[pre + "merge_ln"], x_qp)
        h_qp = acts[pre + "ln1"]
        h = b.layernorm(pre + "ln1", x, blk.ln1, h_qp, x_qp.scale)
        h = _gather(b, pre + "windows", h, blk.windows, pre + "ln1.windows",
                    _zero_codes(plan, pre + "ln1", h_qp, b.shape(h)[-1]))
        a = _window_attention(b, pre, h, h_qp, blk)
        x = b.add(pre + "res1", x, x_qp.scale, a, acts[pre + "proj"].scale, acts[pre + "res1"])
        h = b.layernorm(pre + "ln2", x, blk.ln2, acts[pre + "ln2"], acts[pre + "res1"].scale)
        m = b.mlp(pre, h, acts[pre + "ln2"], blk)
        x = b.add(pre + "res2", x, acts[pre + "res1"].scale, m, acts[pre + "fc2"].scale, acts[pre + "res2"])
        x_qp = acts[pre + "res2"]
    n_qp = acts["norm"]
    h = b.layernorm("norm", x, s.norm, n_qp, x_qp.scale)
    pooled = b.tensor("pool", n_qp.bits, (b.shape(h)[-1],), n_qp)  # a mean of codes stays on their grid
    b.op("mean_pool", "pool", [h], [pooled])
    logits, _ = b.linear("head", pooled, s.head, n_qp)
    return b.program(inputs, [logits])
