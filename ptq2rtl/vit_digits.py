"""vit-digits: a small DeiT-style ViT trained on scikit-learn's bundled digits.

Everything that defines the model lives here: the fixed train/test split of
``sklearn.datasets.load_digits``, the preprocessing (8x8 -> 16x16 bilinear,
normalized), the architecture (a plain timm ``VisionTransformer``: conv patch
embedding with stride = patch, class token, learned absolute position
embedding, pre-LN blocks, final LayerNorm, linear head on the class token) and
the deterministic training recipe that produced the shipped checkpoint
``ptq2rtl/data/vit_digits.safetensors`` (with its config and held-out accuracy
in ``ptq2rtl/data/vit_digits.json``).

Reproducibility: training runs in a fresh interpreter whose float kernels are
pinned (one thread; on x86-64 ATen's AVX2 code path and MKL's strict
conditional numerical reproducibility in its COMPATIBLE branch, which gives the
same bits on Intel and AMD CPUs, where MKL ignores a request for its AVX2
branch; oneDNN off), with a fixed seed
and ``torch.use_deterministic_algorithms(True)``. Training is chaotic: any
change of summation order (thread count, SIMD width) ends in different
weights, which is why the kernels are pinned rather than the tolerance widened.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

DATA_DIR = Path(__file__).resolve().parent / "data"
CHECKPOINT = DATA_DIR / "vit_digits.safetensors"

SPLIT_SEED = 0
TEST_FRACTION = 0.3
CALIB_SIZE = 256
IMAGE_SIZE = 16
# Mean / std of the upsampled, [0, 1]-scaled images (rounded): fixed constants, so
# preprocessing is a pure function of the pixels.
MEAN = 0.3
STD = 0.4


@dataclass(frozen=True)
class VitDigitsConfig:
    """Architecture of vit-digits: keyword arguments of timm's VisionTransformer."""

    img_size: int = IMAGE_SIZE
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10
    embed_dim: int = 96
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 2.0
    global_pool: str = "token"


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe; changing any field changes the shipped checkpoint."""

    seed: int = 0
    threads: int = 1
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    label_smoothing: float = 0.1
    max_shift: int = 2  # random translation, in pixels of the 16x16 image


MODEL_CONFIG = VitDigitsConfig()
TRAIN_CONFIG = TrainConfig()


def build_vit_digits(config: VitDigitsConfig = MODEL_CONFIG) -> VisionTransformer:
    """A freshly initialized vit-digits network (FP32, train mode)."""
    return VisionTransformer(**asdict(config))


def preprocess(pixels: np.ndarray, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Raw digits rows (N, 64) with values 0..16 -> normalized float32 [N, 1, image_size, image_size]."""
    images = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).reshape(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (images - MEAN) / STD


def digits_split(image_size: int = IMAGE_SIZE) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed splits ``train`` (70 %), ``test`` (30 %, held out) and ``calib``.

    The train/test split is stratified with seed 0; ``calib`` is the first
    ``CALIB_SIZE`` images of the (shuffled) train part. Images are
    preprocessed float32 [N, 1, image_size, image_size] (cnn-digits takes them
    at 32x32); labels are int64 [N].
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    train = (preprocess(x_train, image_size), torch.as_tensor(y_train, dtype=torch.int64))
    test = (preprocess(x_test, image_size), torch.as_tensor(y_test, dtype=torch.int64))
    calib = (train[0][:CALIB_SIZE], train[1][:CALIB_SIZE])
    return {"train": train, "test": test, "calib": calib}


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with background."""
    n, _, h, w = images.shape
    background = (0.0 - MEAN) / STD
    padded = F.pad(images, (max_shift,) * 4, value=background)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(images)


def reproducible_env() -> dict[str, str]:
    """Environment variables that pin the float kernels of the training process."""
    env = {"OMP_NUM_THREADS": str(TRAIN_CONFIG.threads), "MKL_NUM_THREADS": str(TRAIN_CONFIG.threads)}
    if platform.machine().lower() in ("x86_64", "amd64"):
        env.update({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT"})
    return env


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux): the float kernels' blocking, and so their
    rounding, follows the CPU's caches and vector units, which the pinned environment does not fix."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_vit_digits(out_path: str | Path = CHECKPOINT, progress: bool = True) -> dict[str, Any]:
    """Train vit-digits deterministically; save it to ``out_path`` (safetensors).

    Runs the training in a fresh interpreter with ``reproducible_env()`` so the
    result does not depend on the caller's torch state. Writes the checkpoint
    and, next to it (same stem, ``.json``), its configs, split, preprocessing
    and held-out top-1. Returns that JSON's content plus ``train_seconds``
    (wall time, interpreter start included).
    """
    out_path = Path(out_path).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "ptq2rtl.vit_digits", str(out_path)] + ([] if progress else ["--quiet"])
    start = time.perf_counter()
    subprocess.run(command, env={**os.environ, **reproducible_env()}, check=True)
    seconds = time.perf_counter() - start
    meta = json.loads(out_path.with_suffix(".json").read_text())
    return {**meta, "train_seconds": seconds}


def pin_kernels(seed: int) -> torch.Generator:
    """Pin this interpreter's float kernels (threads, deterministic algorithms, no oneDNN) and seed torch with
    ``seed``; returns a generator seeded likewise, for a training's shuffles and shifts."""
    torch.set_num_threads(TRAIN_CONFIG.threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False  # oneDNN picks kernels per CPU; ATen + MKL CNR are pinnable
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: Any,
    generator: torch.Generator,
    desc: str,
    progress: bool,
) -> None:
    """Train ``model`` in place for ``cfg.epochs`` epochs of shuffled batches of ``cfg.batch_size``, each image
    shifted at random by up to ``cfg.max_shift`` pixels, on cross-entropy smoothed by ``cfg.label_smoothing``;
    ``optimizer``'s learning rate warms up linearly for ``cfg.warmup_epochs``, then decays to zero along a
    cosine. ``cfg`` is vit-digits' or cnn-digits' TrainConfig."""
    from tqdm import tqdm

    steps_per_epoch = -(-len(images) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:
        """Linear warm-up, then cosine decay to zero."""
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + float(np.cos(np.pi * done)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            shifted = random_shift(images[idx], cfg.max_shift, generator)
            loss = F.cross_entropy(model(shifted), labels[idx], label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach().item() * len(idx)
        bar.set_postfix(loss=f"{total_loss / len(images):.4f}")


def _train(out_path: Path, progress: bool) -> None:
    """The training itself; run by ``train_vit_digits`` in a pinned interpreter."""
    from safetensors.torch import save_file

    cfg = TRAIN_CONFIG
    generator = pin_kernels(cfg.seed)
    splits = digits_split()
    x_train, y_train = splits["train"]

    model = build_vit_digits(MODEL_CONFIG)
    decayed = {n for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n}
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in model.named_parameters() if n in decayed], "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in model.named_parameters() if n not in decayed], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    fit(model, optimizer, x_train, y_train, cfg, generator, "train vit-digits", progress)

    test_top1 = accuracy(model, *splits["test"])
    meta = {
        "model": asdict(MODEL_CONFIG),
        "train": asdict(cfg),
        "split": {
            "seed": SPLIT_SEED,
            "test_fraction": TEST_FRACTION,
            "calib_size": CALIB_SIZE,
            "n_train": len(x_train),
            "n_test": len(splits["test"][1]),
        },
        "preprocess": {"image_size": IMAGE_SIZE, "mean": MEAN, "std": STD, "resize": "bilinear 8x8 -> 16x16"},
        "test_top1": test_top1,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "pinned_env": {k: os.environ.get(k, "") for k in sorted(reproducible_env())},
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_path), metadata={"config": json.dumps(meta["model"])})
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    _train(Path(sys.argv[1]), progress="--quiet" not in sys.argv[2:])
