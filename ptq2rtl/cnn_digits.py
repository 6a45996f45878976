"""cnn-digits: a small ResNet trained on scikit-learn's bundled digits.

vit-digits' convolutional twin. It shares vit-digits' split and
normalization (``vit_digits.digits_split``) but takes the 8x8 digits
upsampled to 32x32 (bilinear), so that a ResNet stem (7x7 stride-2
convolution, 3x3 stride-2 max pool) and three stride-2 stages leave a 1x1 map.
The architecture is timm's own ``ResNet`` with ``BasicBlock``\\s (3x3
convolutions, BatchNorm, ReLU, a 1x1 projection where a stage changes width or
stride, global average pool, linear head), one block per stage: the modules
of timm's resnet18, fewer and narrower. The shipped checkpoint is
``ptq2rtl/data/cnn_digits.safetensors``, its configs and held-out accuracy in
``ptq2rtl/data/cnn_digits.json``.

Training is reproducible as vit-digits' is: a fresh interpreter with pinned
float kernels (``vit_digits.reproducible_env``), a fixed seed and
deterministic algorithms.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from timm.models.resnet import BasicBlock, ResNet

from ptq2rtl import vit_digits

CHECKPOINT = vit_digits.DATA_DIR / "cnn_digits.safetensors"
IMAGE_SIZE = 32


@dataclass(frozen=True)
class CnnDigitsConfig:
    """Architecture of cnn-digits: keyword arguments of timm's ResNet (with ``block=BasicBlock``)."""

    layers: tuple[int, ...] = (1, 1, 1, 1)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    stem_width: int = 16
    in_chans: int = 1
    num_classes: int = 10


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe; changing any field changes the shipped checkpoint."""

    seed: int = 0
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9  # SGD with Nesterov momentum
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    max_shift: int = 4  # random translation, in pixels of the 32x32 image (vit-digits' 2 of 16x16)
    train_size: int | None = None  # train on the first this many training images; None: all of them


MODEL_CONFIG = CnnDigitsConfig()
TRAIN_CONFIG = TrainConfig()


def build_cnn_digits(config: CnnDigitsConfig = MODEL_CONFIG) -> ResNet:
    """A freshly initialized cnn-digits network (FP32, train mode)."""
    return ResNet(block=BasicBlock, **asdict(config))


def digits_split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """vit-digits' ``train`` / ``test`` / ``calib`` splits, the images float32 [N, 1, 32, 32]."""
    return vit_digits.digits_split(IMAGE_SIZE)


def train_cnn_digits(
    out_path: str | Path = CHECKPOINT, progress: bool = True, config: TrainConfig = TRAIN_CONFIG
) -> dict[str, Any]:
    """Train cnn-digits deterministically with the recipe ``config``; save it to ``out_path`` (safetensors).

    Runs the training in a fresh interpreter with ``vit_digits.reproducible_env()``.
    Writes the checkpoint and, next to it (same stem, ``.json``), its configs,
    split, preprocessing and held-out top-1. Returns that JSON's content plus
    ``train_seconds`` (wall time, interpreter start included).
    """
    out_path = Path(out_path).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "ptq2rtl.cnn_digits", str(out_path), json.dumps(asdict(config))]
    start = time.perf_counter()
    subprocess.run(command + ([] if progress else ["--quiet"]), env={**os.environ, **vit_digits.reproducible_env()},
                   check=True)
    seconds = time.perf_counter() - start
    meta = json.loads(out_path.with_suffix(".json").read_text())
    return {**meta, "train_seconds": seconds}


def _train(out_path: Path, cfg: TrainConfig, progress: bool) -> None:
    """The training itself; run by ``train_cnn_digits`` in a pinned interpreter."""
    from safetensors.torch import save_file

    generator = vit_digits.pin_kernels(cfg.seed)
    splits = digits_split()
    x_train, y_train = (t[: cfg.train_size] for t in splits["train"])
    model = build_cnn_digits(MODEL_CONFIG)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    vit_digits.fit(model, optimizer, x_train, y_train, cfg, generator, "train cnn-digits", progress)

    meta = {
        "model": asdict(MODEL_CONFIG),
        "train": asdict(cfg),
        "split": {
            "seed": vit_digits.SPLIT_SEED,
            "test_fraction": vit_digits.TEST_FRACTION,
            "calib_size": vit_digits.CALIB_SIZE,
            "n_train": len(x_train),
            "n_test": len(splits["test"][1]),
        },
        "preprocess": {"image_size": IMAGE_SIZE, "mean": vit_digits.MEAN, "std": vit_digits.STD,
                       "resize": f"bilinear 8x8 -> {IMAGE_SIZE}x{IMAGE_SIZE}"},
        "test_top1": vit_digits.accuracy(model, *splits["test"]),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": vit_digits.cpu_model(),
        "pinned_env": {k: os.environ.get(k, "") for k in sorted(vit_digits.reproducible_env())},
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_path), metadata={"config": json.dumps(meta["model"])})
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    _train(Path(sys.argv[1]), replace(TRAIN_CONFIG, **json.loads(sys.argv[2])), progress="--quiet" not in sys.argv[3:])
