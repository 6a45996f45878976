"""Compression of a BERT-family Transformer by surgery and training: structured pruning (attention heads, FFN
neurons), unstructured magnitude pruning, and knowledge distillation of a shallower or narrower student.

What each leaves for the accelerator:

* a pruned head leaves its block: Q, K and V lose the head's ``head_dim`` rows, the output projection the
  matching columns, and the block records its fewer heads (``Block.heads``); the integer program splits
  fewer heads and its linears are narrower, so the cost model counts fewer MACs;
* a pruned FFN neuron is a row of fc1 and a column of fc2 removed;
* magnitude pruning only sets weights to zero: the matrices keep their shapes, and a dense MAC array
  multiplies the zeros as it multiplies any weight (the cost model does not skip them);
* a student keeps some of the teacher's blocks (spread evenly, the last one always) and, optionally, a
  narrower FFN (the neurons the pruning criterion ranks first); it is then trained to match the teacher.

Importance, from one float forward over calibration sentences: a head's is the mean norm (over valid tokens)
of what it adds to the residual stream (its context times its columns of the output projection); an FFN
neuron's is the mean magnitude of its activation times the norm of its fc2 column. Heads are ranked across
the whole model (every block keeps at least one); neurons and magnitudes within each block or matrix.

Distillation minimizes ``1 - cos`` between the student's and the teacher's mean-pooled sentence
embeddings plus ``hidden_weight`` times the mean squared error between each student block's output and
that of the teacher block it was initialised from (valid tokens only), with AdamW, a linear warm-up over
the first tenth of the steps and a linear decay to zero. The embedding tables are the teacher's and stay
frozen; every block tensor and the embedding LayerNorm are trained. Weights a magnitude pruning set to
zero stay zero (their mask is applied after each step). The only randomness is the order of the sentences,
drawn from a generator seeded with ``seed``, and training runs on one thread: the same inputs give the
same weights, bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from quant.model import Block, Forward, Linear, Norm, Transformer
from quant.quantizers import QuantError

#: a block's linears, in the order the float forward uses them
LINEARS = ("q", "k", "v", "proj", "fc1", "fc2")
NORMS = ("ln1", "ln2")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune: fractions in [0, 1)."""

    heads: float = 0.0  # of all attention heads, ranked across the model
    ffn: float = 0.0  # of each block's FFN neurons
    magnitude: float = 0.0  # of each block linear's weights, the smallest in magnitude, set to zero

    def __post_init__(self):
        for name in ("heads", "ffn", "magnitude"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise QuantError(f"prune {name}={value}: a fraction in [0, 1) is needed")

    @property
    def none(self) -> bool:
        return self.heads == self.ffn == self.magnitude == 0.0


@dataclass(frozen=True)
class TrainConfig:
    """A distillation run: epochs over the training sentences in shuffled batches."""

    epochs: float = 3.0  # may be fractional: that share of an epoch's batches
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    hidden_weight: float = 1.0  # weight of the hidden-state MSE beside the embedding's 1 - cos
    seed: int = 0

    def __post_init__(self):
        if self.epochs <= 0 or self.batch < 1 or self.lr <= 0 or self.hidden_weight < 0:
            raise QuantError(f"distillation needs epochs > 0, batch >= 1, lr > 0, hidden_weight >= 0; got {self}")


# ------------------------------------------------------------------ importance
def _check_bert(spec: Transformer) -> None:
    if spec.family != "bert":
        raise QuantError(f"{spec.name}: compression handles BERT-family encoders, not the {spec.family!r} family")


@torch.no_grad()
def importance(spec: Transformer, batches: Sequence[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per block, the importance of each attention head [heads] and of each FFN neuron [ffn] (module doc)."""
    _check_bert(spec)
    heads = [torch.zeros(spec.heads_of(b)) for b in spec.blocks]
    neurons = [torch.zeros(b.fc1.w.shape[0]) for b in spec.blocks]
    tokens = 0.0
    mask: torch.Tensor | None = None

    def hook(name: str, x: torch.Tensor) -> torch.Tensor:
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "blocks":
            return x
        i, point = parts[1:]
        blk, m = spec.blocks[int(i)], mask[..., None]
        if point == "attn":  # context [B, T, heads * d] before the output projection
            n = spec.heads_of(blk)
            ctx = (x * m).reshape(*x.shape[:2], n, -1)
            w = blk.proj.w.reshape(blk.proj.w.shape[0], n, -1)  # [dim, heads, d]
            heads[int(i)] += torch.einsum("bthd,ohd->btho", ctx, w).norm(dim=-1).sum((0, 1))
        elif point == "gelu":
            neurons[int(i)] += (x.abs() * m).sum((0, 1)) * blk.fc2.w.norm(dim=0)
        return x

    fwd = Forward(spec, act=hook)
    for inputs in batches:
        mask = inputs["attention_mask"].float()
        tokens += float(mask.sum())
        fwd(inputs)
    return [h / tokens for h in heads], [n / tokens for n in neurons]


# ------------------------------------------------------------------ surgery
def _rows(lin: Linear, keep: torch.Tensor) -> Linear:
    return Linear(lin.w[keep].clone(), lin.b[keep].clone())


def _cols(lin: Linear, keep: torch.Tensor) -> Linear:
    return Linear(lin.w[:, keep].clone(), lin.b.clone())


def remove_heads(spec: Transformer, drop: dict[int, Sequence[int]]) -> Transformer:
    """``spec`` without the heads ``drop[block]`` (indices among the block's current heads); a block keeps at
    least one head."""
    _check_bert(spec)
    out = spec.copy()
    d = spec.head_dim
    for i, gone in drop.items():
        blk = out.blocks[i]
        n = spec.heads_of(blk)
        if any(not 0 <= h < n for h in gone):
            raise QuantError(f"blocks.{i}: head indices {sorted(gone)} out of range 0..{n - 1}")
        kept = [h for h in range(n) if h not in set(gone)]
        if not kept:
            raise QuantError(f"blocks.{i}: pruning every one of its {n} heads; a block keeps at least one")
        keep = torch.tensor([h * d + j for h in kept for j in range(d)])
        out.blocks[i] = replace(blk, q=_rows(blk.q, keep), k=_rows(blk.k, keep), v=_rows(blk.v, keep),
                                proj=_cols(blk.proj, keep), heads=len(kept))
    return out


def keep_neurons(spec: Transformer, keep: Sequence[torch.Tensor]) -> Transformer:
    """``spec`` whose block i keeps the FFN neurons ``keep[i]`` (sorted indices)."""
    out = spec.copy()
    for i, idx in enumerate(keep):
        blk = out.blocks[i]
        out.blocks[i] = replace(blk, fc1=_rows(blk.fc1, idx), fc2=_cols(blk.fc2, idx))
    return out


def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest scores, in ascending index order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
    return torch.tensor(sorted(order[:n]), dtype=torch.int64)


def prune_heads(spec: Transformer, fraction: float, scores: Sequence[torch.Tensor]) -> tuple[Transformer, dict]:
    """Remove ``round(fraction * all heads)`` heads of least importance, ranked across blocks; every block keeps
    its most important head. Returns the pruned spec and the removed heads per block."""
    ranked = sorted(((float(s[h]), i, h) for i, s in enumerate(scores) for h in range(len(s))))
    target = round(fraction * sum(len(s) for s in scores))
    left = [len(s) for s in scores]
    drop: dict[int, list[int]] = {}
    for _, i, h in ranked:
        if sum(len(v) for v in drop.values()) == target:
            break
        if left[i] > 1:
            drop.setdefault(i, []).append(h)
            left[i] -= 1
    return remove_heads(spec, drop), {i: sorted(v) for i, v in sorted(drop.items())}


def prune_ffn(spec: Transformer, fraction: float, scores: Sequence[torch.Tensor]) -> Transformer:
    """Keep the ``1 - fraction`` most important FFN neurons of each block (at least one)."""
    return keep_neurons(spec, [_top(s, max(1, len(s) - round(fraction * len(s)))) for s in scores])


def prune_magnitude(spec: Transformer, fraction: float) -> Transformer:
    """Set the ``round(fraction * size)`` smallest-magnitude weights of each block linear to zero (ties broken
    by position, so exactly that many)."""
    out = spec.copy()
    for blk in out.blocks:
        for name in LINEARS:
            w = getattr(blk, name).w
            n = round(fraction * w.numel())
            if n:
                order = torch.argsort(w.abs().flatten(), stable=True)
                w.view(-1)[order[:n]] = 0.0
    return out


def prune(spec: Transformer, cfg: PruneConfig, batches: Sequence[dict]) -> tuple[Transformer, dict]:
    """Heads, then FFN neurons (importance measured once, on the unpruned ``spec``), then magnitudes.
    Returns the pruned spec and what was removed."""
    _check_bert(spec)
    removed: dict = {}
    if cfg.heads or cfg.ffn:
        head_scores, neuron_scores = importance(spec, batches)
        if cfg.heads:
            spec, removed["heads"] = prune_heads(spec, cfg.heads, head_scores)
        if cfg.ffn:
            spec = prune_ffn(spec, cfg.ffn, neuron_scores)
            removed["ffn_width"] = [b.fc1.w.shape[0] for b in spec.blocks]
    if cfg.magnitude:
        spec = prune_magnitude(spec, cfg.magnitude)
    return spec, removed


def student_layers(depth: int, layers: int) -> list[int]:
    """The teacher blocks a student of ``layers`` blocks starts from: spread evenly, the last one always
    (6 -> 3: blocks 1, 3, 5)."""
    if not 1 <= layers <= depth:
        raise QuantError(f"a student of {layers} layers from a teacher of {depth}: 1..{depth} layers")
    return [round((j + 1) * depth / layers) - 1 for j in range(layers)]


def make_student(teacher: Transformer, layers: int, ffn: int, batches: Sequence[dict]) -> Transformer:
    """The student before training: the teacher's blocks ``student_layers``, with ``ffn`` neurons each (the
    most important; 0 keeps the teacher's width)."""
    _check_bert(teacher)
    picked = student_layers(len(teacher.blocks), layers)
    student = teacher.copy()
    student.blocks = [student.blocks[i] for i in picked]
    if ffn:
        width = teacher.blocks[0].fc1.w.shape[0]
        if not 1 <= ffn <= width:
            raise QuantError(f"a student FFN of {ffn} neurons from a teacher's {width}: 1..{width}")
        _, neuron_scores = importance(student, batches)
        student = keep_neurons(student, [_top(s, ffn) for s in neuron_scores])
    return student


# ------------------------------------------------------------------ distillation
def nonzero_masks(spec: Transformer) -> dict[tuple[int, str], torch.Tensor]:
    """Where a block linear's weights are zero: the masks that keep a magnitude pruning's zeros through
    training (only for matrices that have zeros)."""
    masks = {}
    for i, blk in enumerate(spec.blocks):
        for name in LINEARS:
            w = getattr(blk, name).w
            if bool((w == 0).any()):
                masks[(i, name)] = w != 0
    return masks


def _trainable(spec: Transformer) -> list[torch.Tensor]:
    tensors = [spec.emb_norm.g, spec.emb_norm.b]
    for blk in spec.blocks:
        tensors += [t for name in LINEARS for t in (getattr(blk, name).w, getattr(blk, name).b)]
        tensors += [t for name in NORMS for t in (getattr(blk, name).g, getattr(blk, name).b)]
    return tensors


class _Recorder:
    """Block outputs of a float forward (the residual stream after each block's second LayerNorm)."""

    def __init__(self):
        self.hidden: dict[int, torch.Tensor] = {}

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name.startswith("blocks.") and name.endswith(".ln2_out"):
            self.hidden[int(name.split(".")[1])] = x
        return x


def distill(student: Transformer, teacher: Transformer, layer_map: Sequence[int], sentences: Sequence[str],
            tokenize: Callable[[list[str]], dict], cfg: TrainConfig, *, progress: bool = True) -> tuple[Transformer, dict]:
    """Train a copy of ``student`` to match ``teacher`` on ``sentences`` (module doc); student block j matches
    teacher block ``layer_map[j]``. Returns the trained student and a log (steps, seconds, first and last
    epoch's mean loss)."""
    from tqdm import tqdm

    _check_bert(student)
    if len(layer_map) != len(student.blocks):
        raise QuantError(f"layer map {list(layer_map)} for a student of {len(student.blocks)} blocks")
    if len(sentences) < 2:
        raise QuantError(f"distillation needs at least 2 sentences, got {len(sentences)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student = student.copy()
        masks = nonzero_masks(student)
        params = [t.requires_grad_(True) for t in _trainable(student)]
        decayed = [t for t in params if t.ndim >= 2]
        optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": cfg.weight_decay},
                                       {"params": [t for t in params if t.ndim < 2], "weight_decay": 0.0}],
                                      lr=cfg.lr)
        per_epoch = math.ceil(len(sentences) / cfg.batch)
        total = max(1, round(cfg.epochs * per_epoch))
        warmup = max(1, total // 10)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
        generator = torch.Generator().manual_seed(cfg.seed)
        t_rec, s_rec = _Recorder(), _Recorder()
        t_fwd, s_fwd = Forward(teacher, act=t_rec), Forward(student, act=s_rec)
        losses: list[float] = []
        start = time.perf_counter()
        bar = tqdm(total=total, desc="distill", unit="step", disable=not progress)
        order: list[int] = []
        for step in range(total):
            if not order:
                order = torch.randperm(len(sentences), generator=generator).tolist()
            chunk, order = order[:cfg.batch], order[cfg.batch:]
            inputs = tokenize([sentences[j] for j in chunk])
            mask = inputs["attention_mask"].float()[..., None]
            with torch.no_grad():
                t_emb = t_fwd(inputs)
            s_emb = s_fwd(inputs)
            loss = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
            if cfg.hidden_weight:
                mse = sum(((s_rec.hidden[j] - t_rec.hidden[i]) ** 2 * mask).sum() for j, i in enumerate(layer_map))
                loss = loss + cfg.hidden_weight * mse / (mask.sum() * student.dim * len(layer_map))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                for (i, name), m in masks.items():
                    getattr(student.blocks[i], name).w.mul_(m)
            losses.append(float(loss.detach()))
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        for t in params:
            t.requires_grad_(False)
    finally:
        torch.set_num_threads(threads)
    head, tail = losses[:per_epoch], losses[-per_epoch:]
    return student, {"steps": total, "seconds": round(time.perf_counter() - start, 1),
                     "loss_first_epoch": sum(head) / len(head), "loss_last_epoch": sum(tail) / len(tail)}


# ------------------------------------------------------------------ size and storage
def parameter_count(spec: Transformer) -> dict[str, int]:
    """Float parameters: every tensor (``total``), the block linears (``encoder``), and the nonzero block
    linear weights (``nonzero``)."""
    tables = [spec.word, spec.pos_emb, spec.type_emb, spec.emb_norm.g, spec.emb_norm.b]
    encoder = nonzero = norms = 0
    for blk in spec.blocks:
        for name in LINEARS:
            lin = getattr(blk, name)
            encoder += lin.w.numel() + lin.b.numel()
            nonzero += int((lin.w != 0).sum())
        norms += sum(getattr(blk, n).g.numel() + getattr(blk, n).b.numel() for n in NORMS)
    total = encoder + norms + sum(t.numel() for t in tables if t is not None)
    return {"total": total, "encoder": encoder, "nonzero": nonzero}


def spec_tensors(spec: Transformer) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a compressed BERT spec by name, and the structure that is not a tensor (per-block heads,
    attention scales): what :func:`from_tensors` rebuilds it from."""
    _check_bert(spec)
    tensors = {"emb_norm.g": spec.emb_norm.g, "emb_norm.b": spec.emb_norm.b}
    for i, blk in enumerate(spec.blocks):
        for name in LINEARS + NORMS:
            part = getattr(blk, name)
            for field in ("w", "b") if name in LINEARS else ("g", "b"):
                tensors[f"blocks.{i}.{name}.{field}"] = getattr(part, field)
    structure = {"heads": [spec.heads_of(b) for b in spec.blocks], "attn_scale": [b.attn_scale for b in spec.blocks]}
    return {k: v.detach().contiguous() for k, v in tensors.items()}, structure


def from_tensors(teacher: Transformer, tensors: dict[str, torch.Tensor], structure: dict) -> Transformer:
    """A spec with ``teacher``'s embedding tables and norm epsilons and the blocks ``tensors`` hold."""
    out = teacher.copy()
    out.emb_norm = Norm(tensors["emb_norm.g"], tensors["emb_norm.b"], teacher.emb_norm.eps)
    eps = {n: getattr(teacher.blocks[0], n).eps for n in NORMS}
    blocks = []
    for i, (heads, scale) in enumerate(zip(structure["heads"], structure["attn_scale"])):
        t = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"blocks.{i}.")}
        parts = {n: Linear(t[f"{n}.w"], t[f"{n}.b"]) for n in LINEARS}
        parts |= {n: Norm(t[f"{n}.g"], t[f"{n}.b"], eps[n]) for n in NORMS}
        blocks.append(Block(**parts, attn_scale=scale, heads=0 if heads == teacher.heads else heads))
    out.blocks = blocks
    return out
