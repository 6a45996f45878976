"""Model adapters: a timm ViT/DeiT or an HF BERT encoder as one neutral structure, and its float forward.

The float forward names every point where the integer program has a tensor
of its own (``blocks.3.q``, ``blocks.3.res1``, ...). A hook sees each point:
identity for FP32, an observer for calibration, a fake quantizer for the
paper protocol. Quantization methods transform the structure (equivalent
rewrites such as RepQ's reparameterization) and the lowering walks the same
structure to emit the integer program, so the three can never disagree on
the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

#: role of each point: what it is quantized to in the integer program
#:  act      linear input, abits, asymmetric
#:  qkv      matmul operand, abits, symmetric
#:  probs    attention probabilities, log2 codes
#:  residual residual stream, int16 symmetric
#:  gelu_in  GELU unit input, int8 asymmetric
#:  input    the image, int8 asymmetric
#:  ln_in    LayerNorm input: the int16 residual, unless a method narrows it (FQ-ViT's PTF)
#:  float    not quantized (scores before softmax, logits)
POINT_ROLES = {
    "input": "input", "embed": "residual", "embed_ln": "residual",
    "in": "act", "ln1": "act", "q": "qkv", "k": "qkv", "v": "qkv", "scores": "float", "probs": "probs",
    "attn": "act", "proj": "residual", "res1": "residual", "ln1_out": "residual", "ln2": "act",
    "fc1": "gelu_in", "gelu": "act", "fc2": "residual", "res2": "residual", "ln2_out": "residual",
    "norm": "act", "logits": "float", "pool": "residual", "ln_in": "ln_in",
    "merge_ln": "act", "merge": "residual",  # Swin's patch merging: LayerNorm output, reduction output
}


def role(point: str) -> str:
    return POINT_ROLES[point.rsplit(".", 1)[-1]]


@dataclass
class Linear:
    w: torch.Tensor  # [N, K]
    b: torch.Tensor  # [N]


@dataclass
class Norm:
    g: torch.Tensor
    b: torch.Tensor
    eps: float


@dataclass
class Block:
    ln1: Norm
    q: Linear
    k: Linear
    v: Linear
    proj: Linear
    ln2: Norm
    fc1: Linear
    fc2: Linear
    attn_scale: float  # multiplies Q.K^T before the softmax (1/sqrt(head_dim) until a method rewrites it)
    heads: int = 0  #: this block's attention heads where pruning left fewer than the model's (0: the model's)


@dataclass
class Transformer:
    """A pre-LN ViT/DeiT (family "vit") or a post-LN BERT encoder (family "bert")."""

    family: str
    name: str
    dim: int
    heads: int
    blocks: list[Block]
    # vit
    img_size: int = 0
    in_chans: int = 0
    patch: int = 0
    patch_embed: Linear | None = None
    cls: torch.Tensor | None = None
    pos: torch.Tensor | None = None
    norm: Norm | None = None
    head: Linear | None = None
    # bert
    word: torch.Tensor | None = None
    pos_emb: torch.Tensor | None = None
    type_emb: torch.Tensor | None = None  # None: no token types (DistilBERT)
    emb_norm: Norm | None = None
    act: str = "gelu"  # the FFN activation, a key of ACTIVATIONS
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def heads_of(self, blk: Block) -> int:
        """The attention heads of ``blk``: the model's, or fewer where heads were pruned (``quant.compress``)."""
        return blk.heads or self.heads

    def copy(self) -> "Transformer":
        """A deep copy whose tensors a method may rewrite in place."""
        def clone(o):
            if isinstance(o, torch.Tensor):
                return o.clone()
            if isinstance(o, (Linear, Norm, Block)):
                return replace(o, **{k: clone(v) for k, v in o.__dict__.items()})
            if isinstance(o, list):
                return [clone(v) for v in o]
            return o
        return replace(self, **{k: clone(v) for k, v in self.__dict__.items()})


def _lin(m) -> Linear:
    b = m.bias if m.bias is not None else torch.zeros(m.weight.shape[0])
    return Linear(m.weight.detach().float().clone(), b.detach().float().clone())


def _norm(m) -> Norm:
    return Norm(m.weight.detach().float().clone(), m.bias.detach().float().clone(), float(m.eps))


def from_timm_vit(model: torch.nn.Module, name: str) -> Transformer:
    """Adapter for timm's VisionTransformer (ViT / DeiT with a class token and absolute positions)."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"{name}: integer lowering supports timm VisionTransformer models, got {type(model).__name__}")
    if getattr(model, "global_pool", "token") != "token" or model.cls_token is None or getattr(model, "reg_token", None) is not None:
        raise TypeError(f"{name}: integer lowering needs a class token and global_pool='token'")
    conv = model.patch_embed.proj
    dim = conv.weight.shape[0]
    blocks = []
    for blk in model.blocks:
        for part in ("ls1", "ls2"):
            if not isinstance(getattr(blk, part), torch.nn.Identity):
                raise TypeError(f"{name}: LayerScale blocks are not supported by the integer lowering")
        qkv = _lin(blk.attn.qkv)
        q, k, v = (Linear(w, b) for w, b in zip(qkv.w.chunk(3), qkv.b.chunk(3)))
        blocks.append(Block(_norm(blk.norm1), q, k, v, _lin(blk.attn.proj), _norm(blk.norm2),
                            _lin(blk.mlp.fc1), _lin(blk.mlp.fc2), float(blk.attn.scale)))
    return Transformer(
        family="vit", name=name, dim=dim, heads=model.blocks[0].attn.num_heads, blocks=blocks,
        img_size=model.patch_embed.img_size[0], in_chans=conv.weight.shape[1], patch=conv.kernel_size[0],
        patch_embed=Linear(conv.weight.detach().float().reshape(dim, -1).clone(), conv.bias.detach().float().clone()),
        cls=model.cls_token.detach().float().reshape(dim).clone(),
        pos=model.pos_embed.detach().float().reshape(-1, dim).clone(),
        norm=_norm(model.norm), head=_lin(model.head))


def from_hf_bert(model: torch.nn.Module, name: str) -> Transformer:
    """Adapter for transformers' BertModel (post-LN encoder; MiniLM)."""
    emb = model.embeddings
    blocks = []
    for layer in model.encoder.layer:
        att = layer.attention
        blocks.append(Block(
            ln1=_norm(att.output.LayerNorm), q=_lin(att.self.query), k=_lin(att.self.key), v=_lin(att.self.value),
            proj=_lin(att.output.dense), ln2=_norm(layer.output.LayerNorm),
            fc1=_lin(layer.intermediate.dense), fc2=_lin(layer.output.dense),
            attn_scale=att.self.attention_head_size ** -0.5))
    return Transformer(
        family="bert", name=name, dim=model.config.hidden_size, heads=model.config.num_attention_heads,
        blocks=blocks, word=emb.word_embeddings.weight.detach().float().clone(),
        pos_emb=emb.position_embeddings.weight.detach().float().clone(),
        type_emb=emb.token_type_embeddings.weight.detach().float().clone(), emb_norm=_norm(emb.LayerNorm))


def adapt(model: torch.nn.Module, name: str, family: str) -> Transformer:
    if family == "bert":
        from quant.hf_encoders import from_hf_encoder

        return from_hf_encoder(model, name)
    if family == "vit":
        return from_timm_vit(model, name)
    if family == "swin":
        from quant.swin import from_timm_swin

        return from_timm_swin(model, name)
    raise TypeError(f"{name}: no integer lowering for the {family!r} family yet (supported: vit, swin, bert)")


# ------------------------------------------------------------------ float forward
Hook = Callable[[str, torch.Tensor], torch.Tensor]

#: the FFN activations, by their transformers config names; the GELU unit's ROM holds any of them
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # erf
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
WeightHook = Callable[[str, torch.Tensor], torch.Tensor]


def _identity(name: str, x: torch.Tensor) -> torch.Tensor:
    return x


def _ln(x: torch.Tensor, n: Norm) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), n.g, n.b, n.eps)


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(1, 2)


class Forward:
    """The float forward of a Transformer with hooks at every named point.

    ``Forward(spec)`` of a Swin spec is a ``quant.swin.SwinForward`` (its embedding, blocks and head
    override these, at the same points)."""

    def __new__(cls, spec: Transformer, *args, **kwargs):
        if cls is Forward and spec.family == "swin":
            from quant.swin import SwinForward

            cls = SwinForward
        return super().__new__(cls)

    def __init__(self, spec: Transformer, act: Hook = _identity, weight: WeightHook = _identity):
        self.spec, self.act, self.weight = spec, act, weight

    def linear(self, x: torch.Tensor, lin: Linear, name: str) -> torch.Tensor:
        return F.linear(x, self.weight(name, lin.w), lin.b)

    def attention(self, h: torch.Tensor, blk: Block, pre: str, key_mask: torch.Tensor | None) -> torch.Tensor:
        act, heads = self.act, self.spec.heads_of(blk)
        q = _split(act(pre + "q", self.linear(h, blk.q, pre + "q")), heads)
        k = _split(act(pre + "k", self.linear(h, blk.k, pre + "k")), heads)
        v = _split(act(pre + "v", self.linear(h, blk.v, pre + "v")), heads)
        scores = act(pre + "scores", (q @ k.transpose(-1, -2)) * blk.attn_scale)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        p = act(pre + "probs", scores.softmax(dim=-1))
        o = (p @ v).transpose(1, 2).flatten(2)  # [B, T, heads * head_dim]: narrower than h where heads were pruned
        return self.linear(act(pre + "attn", o), blk.proj, pre + "proj")

    def norm(self, name: str, x: torch.Tensor, n: Norm) -> torch.Tensor:
        """LayerNorm whose input is a point of its own (``<name>.ln_in``) and whose output is ``name``."""
        return self.act(name, _ln(self.act(name + ".ln_in", x), n))

    def __call__(self, inputs) -> torch.Tensor:
        x, mask = self.embed(inputs)
        for i in range(len(self.spec.blocks)):
            x = self.block(i, x, mask)
        return self.head(x, mask)

    def embed(self, inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs -> the residual stream entering block 0, and the key mask (None for images)."""
        s, act = self.spec, self.act
        if s.family == "vit":
            x = act("input", inputs)
            b, c, hh, ww = x.shape
            p = s.patch
            patches = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
            x = self.linear(patches, s.patch_embed, "patch_embed")
            x = torch.cat([s.cls.expand(b, 1, -1), x], dim=1) + s.pos
            return act("embed", x), None
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        types = inputs.get("token_type_ids")
        types = torch.zeros_like(ids) if types is None else types
        pos = torch.arange(ids.shape[1])
        x = s.word[ids] + s.pos_emb[pos][None]
        x = act("embed", x if s.type_emb is None else x + s.type_emb[types])
        return self.norm("embed_ln", x, s.emb_norm), mask

    def block(self, i: int, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        s, act, blk, pre = self.spec, self.act, self.spec.blocks[i], f"blocks.{i}."
        if s.family == "vit":  # pre-LN
            h = self.norm(pre + "ln1", x, blk.ln1)
            x = act(pre + "res1", x + act(pre + "proj", self.attention(h, blk, pre, None)))
            h = self.norm(pre + "ln2", x, blk.ln2)
            g = act(pre + "gelu", F.gelu(act(pre + "fc1", self.linear(h, blk.fc1, pre + "fc1"))))
            return act(pre + "res2", x + act(pre + "fc2", self.linear(g, blk.fc2, pre + "fc2")))
        h = act(pre + "in", x)  # post-LN: the residual itself feeds Q, K, V
        r = act(pre + "res1", x + act(pre + "proj", self.attention(h, blk, pre, mask)))
        x = self.norm(pre + "ln1_out", r, blk.ln1)
        h = act(pre + "ln2", x)
        g = act(pre + "gelu", ACTIVATIONS[s.act](act(pre + "fc1", self.linear(h, blk.fc1, pre + "fc1"))))
        r = act(pre + "res2", x + act(pre + "fc2", self.linear(g, blk.fc2, pre + "fc2")))
        return self.norm(pre + "ln2_out", r, blk.ln2)

    def head(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """ViT: logits from the class token. BERT: the mean-pooled (not yet normalized) sentence embedding."""
        s, act = self.spec, self.act
        if s.family == "vit":
            h = self.norm("norm", x[:, 0], s.norm)
            return act("logits", self.linear(h, s.head, "head"))
        m = mask[..., None].float()
        return act("pool", (x * m).sum(1) / m.sum(1).clamp_min(1))
