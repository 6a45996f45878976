"""bibert-minilm: BiBERT's binarized minilm, trained by distillation from the FP32 model on the sentence corpus.

The student starts from the FP32 weights (its latent real weights) and runs the
binarized forward of ``quant.methods.bibert`` (sign bits with per-channel
scales, Bi-Attention, straight-through gradients). Its loss, against the FP32
teacher on the same batch:

* Direction-Matching Distillation: for Q, K and V of every block, each head's
  similarity matrix ``X X^T`` over the valid tokens, each row normalized to
  unit length (its direction), squared error against the teacher's;
* hidden-state distillation: squared error of the embedding LayerNorm's and
  every block's output on the valid tokens;
* the sentence embedding: one minus the cosine of the mean-pooled outputs.

The data is the corpus minus its evaluation split (the calibration split and
the sentences no split uses), so evaluation stays disjoint. Training runs in a
fresh interpreter with pinned float kernels and a fixed seed (as vit-digits
does), so it is deterministic on one machine; the student is cached under
``$XDG_CACHE_HOME/ptq2rtl/bibert/`` by a hash of the teacher's tensors, the
recipe and the training sentences, and trained on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ptq2rtl import corpus
from quant.methods.bibert import BinaryForward, load_tensors, spec_tensors
from quant.model import Forward, Transformer
from quant.quantizers import QuantError

MODEL = "minilm"


@dataclass(frozen=True)
class TrainConfig:
    """The recipe; changing any field changes the cache key and the student."""

    seed: int = 0
    threads: int = 1
    steps: int = 120
    batch_size: int = 32
    max_tokens: int = 32  #: sentences cut to this many tokens while training (evaluation uses the usual 128)
    lr: float = 1e-3
    warmup_steps: int = 10
    dmd_weight: float = 1.0
    hidden_weight: float = 1.0
    pool_weight: float = 1.0


TRAIN_CONFIG = TrainConfig()


def train_sentences() -> list[str]:
    """Every corpus sentence outside the evaluation split, in the split order."""
    held_out = set(corpus.corpus_split("eval"))
    return [s for s in corpus._split_order(corpus.load_sentences()) if s not in held_out]


def cache_key(teacher: Transformer, cfg: TrainConfig = TRAIN_CONFIG) -> str:
    h = hashlib.sha256()
    for name, t in sorted(spec_tensors(teacher).items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update("\n".join(train_sentences()).encode())
    return h.hexdigest()[:24]


def cache_path(teacher: Transformer, cfg: TrainConfig = TRAIN_CONFIG) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ptq2rtl" / "bibert" / f"{MODEL}-{cache_key(teacher, cfg)}.safetensors"


def student(name: str, teacher: Transformer, progress: bool = True) -> Transformer:
    """The trained binary student of ``teacher`` (minilm): from the cache, or trained now and cached."""
    if name != MODEL:
        raise QuantError(f"bibert trains a binary student of {MODEL} only, not {name!r}")
    from safetensors.torch import load_file

    path = cache_path(teacher)
    if not path.exists():
        train_bibert(path, progress=progress)
    return load_tensors(teacher, load_file(str(path)))


def train_bibert(out_path: str | Path | None = None, progress: bool = True, cfg: TrainConfig = TRAIN_CONFIG) -> dict:
    """Train the student by ``cfg`` in a pinned interpreter; write it to ``out_path`` (default: the cache) with its
    record (``.json`` beside it: recipe, losses, seconds). Returns the record plus ``train_seconds`` (wall time,
    interpreter start included)."""
    from ptq2rtl import flows
    from ptq2rtl.vit_digits import reproducible_env

    out_path = Path(out_path or cache_path(flows.load_spec(MODEL), cfg)).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # vit-digits' pinned kernels, except MKL's reproducible branch: AUTO (this CPU's widest vector code, still
    # the same bits run after run on one machine) where vit-digits takes COMPATIBLE (the same bits on every
    # x86 CPU), which runs minilm's products several times slower
    env = {**os.environ, **reproducible_env(), "OMP_NUM_THREADS": str(cfg.threads), "MKL_NUM_THREADS": str(cfg.threads)}
    if "MKL_CBWR" in env:
        env["MKL_CBWR"] = "AUTO,STRICT"
    command = [sys.executable, "-m", "ptq2rtl.bibert", str(out_path), json.dumps(asdict(cfg))]
    command += [] if progress else ["--quiet"]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    seconds = time.perf_counter() - start
    return {**json.loads(out_path.with_suffix(".json").read_text()), "train_seconds": round(seconds, 1),
            "checkpoint": str(out_path)}


TRACE_TAG = "minilm-bibert-w1a1"  #: the binary program's trace folder under rtl_tests/data/traces/


def write_trace(samples: int = 2, progress: bool = False) -> Path:
    """The MAC array's vectors of the bibert program (every binary product of ``samples`` evaluation sentences,
    cut by ``sim.ops``' trace hooks), written where the mac_array bench replays traces."""
    from ptq2rtl import flows, models
    from quant.quantizers import program_inputs
    from rtl_tests.traces import TRACE_DIR, extract
    from sim import engine

    program, _ = flows.quantize(MODEL, "bibert", 4, 4, progress=progress)
    batch, _ = next(iter(models.iter_batches(MODEL, "eval", samples)))
    result = engine.run(program, program_inputs(program, batch), trace_samples=list(range(samples)))
    path = TRACE_DIR / TRACE_TAG / "mac_array.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **extract(program, result.trace, TRACE_TAG)["mac_array"])
    return path


def direction_matrix(x: torch.Tensor, heads: int, valid: torch.Tensor) -> torch.Tensor:
    """Per head, ``X X^T`` over the tokens with rows normalized to unit length; invalid tokens zeroed."""
    b, t, d = x.shape
    x = x.reshape(b, t, heads, d // heads).transpose(1, 2) * valid[:, None, :, None]
    return F.normalize(x @ x.transpose(-1, -2), dim=-1)


def distill_loss(teacher: dict, student: dict, mask: torch.Tensor, heads: int, cfg: TrainConfig) -> torch.Tensor:
    valid = mask.to(torch.float32)
    pairs = valid[:, None, :, None] * valid[:, None, None, :]
    dmd, hidden = [], []
    for name, s in student.items():
        t = teacher[name]
        part = name.rsplit(".", 1)[-1]
        if part in ("q", "k", "v"):
            err = (direction_matrix(s, heads, valid) - direction_matrix(t, heads, valid)).pow(2) * pairs
            dmd.append(err.sum() / (pairs.sum() * heads))
        elif part in ("embed_ln", "ln2_out"):
            hidden.append(((s - t).pow(2).mean(-1) * valid).sum() / valid.sum())
    pool = 1 - F.cosine_similarity(student["pool"], teacher["pool"], dim=-1).mean()
    return cfg.dmd_weight * torch.stack(dmd).mean() + cfg.hidden_weight * torch.stack(hidden).mean() \
        + cfg.pool_weight * pool


def _recorder(store: dict):
    def record(name: str, x: torch.Tensor):
        part = name.rsplit(".", 1)[-1]
        if part in ("q", "k", "v", "embed_ln", "ln2_out", "pool"):
            store[name] = x
        return x
    return record


def _train(out_path: Path, progress: bool, cfg: TrainConfig) -> None:
    """The training itself; run by ``train_bibert`` in a pinned interpreter."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from ptq2rtl import flows, models
    from ptq2rtl.vit_digits import cpu_model, pin_kernels

    generator = pin_kernels(cfg.seed)
    torch.set_num_threads(cfg.threads)
    teacher = flows.load_spec(MODEL)
    stu = teacher.copy()
    # the word table (11.7 M of the 22.7 M parameters) keeps its FP32 latent values: its sign bits and row
    # magnitudes are the binarized FP32 table, and the step skips a dense update of it
    params = [t for name, t in spec_tensors(stu).items() if name != "word"]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    def lr_factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + float(np.cos(np.pi * done)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    sentences = train_sentences()
    t_store: dict = {}
    s_store: dict = {}
    t_fwd = Forward(teacher, lambda name, x: _recorder(t_store)(name, x) if name.rsplit(".", 1)[-1] != "pool" else x)
    s_fwd = BinaryForward(stu, _recorder(s_store))
    order: list[int] = []
    losses = []
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(range(cfg.steps), desc="train bibert-minilm", unit="step", disable=not progress)
    for _ in bar:
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(sentences), generator=generator).tolist()
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        inputs = models.tokenize([sentences[i] for i in idx], MODEL)
        inputs = {k: v[:, :cfg.max_tokens] for k, v in inputs.items()}
        with torch.no_grad():
            t_store["pool"] = t_fwd(inputs)
        s_fwd(inputs)
        loss = distill_loss(t_store, s_store, inputs["attention_mask"].bool(), stu.heads, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    meta = {"model": MODEL, "train": asdict(cfg), "sentences": len(sentences),
            "loss_first20": float(np.mean(losses[:20])), "loss_last20": float(np.mean(losses[-20:])),
            "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu_start, 1), "torch": torch.__version__, "cpu": cpu_model()}
    state = {k: v.detach().contiguous() for k, v in spec_tensors(stu).items()}
    save_file(state, str(out_path), metadata={"train": json.dumps(asdict(cfg))})
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    _train(Path(sys.argv[1]), "--quiet" not in sys.argv[3:], TrainConfig(**json.loads(sys.argv[2])))
