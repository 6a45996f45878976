"""The FP32 figure of a model on its evaluation split."""

from __future__ import annotations

from typing import Any

import torch

from ptq2rtl import corpus, photos
from ptq2rtl.models.data import iter_batches, photo_inputs, text_order
from ptq2rtl.models.loading import efficientnet_lite_names, load_model
from ptq2rtl.models.registry import ModelError, is_folder_name, model_info
from ptq2rtl.models.text import encode, sentence_transformers_embeddings, text_metrics


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
    capped at the number of classes). efficientnet-lite0, whose labels are its
    own FP32 top-1: ``{"model", "n", "photographs",
    "cosine_vs_efficientnet_lite_pytorch",
    "top1_agreement_vs_efficientnet_lite_pytorch",
    "max_abs_diff_vs_efficientnet_lite_pytorch"}``, the agreement of its
    logits with those of the reference implementation efficientnet_lite_pytorch
    holding the same tensors (mean cosine, top-1 agreement in percent, largest
    absolute difference; None when that package is not installed);
    ``photographs`` is the number in the eval split. minilm: ``{"model", "n",
    "sentences", "cosine_vs_sentence_transformers",
    "nn_agreement_vs_sentence_transformers"}``,
    the agreement of this FP32 path with sentence-transformers' ``encode``
    (None when sentence-transformers is not installed); ``sentences`` is the
    size of the whole corpus. An encoder folder: ``{"model", "n", "sentences",
    "cosine_vs_transformers", "nn_agreement_vs_transformers"}``, the agreement of
    the adapter's float forward (quant.model, what quantization starts from) with
    transformers' own forward of the folder's model. Text models evaluate on the
    standard-library corpus, or on ``data``, a text file with one sentence a line.
    """
    from tqdm import tqdm

    info = model_info(name)
    model = load_model(name, checkpoint)
    if name == "efficientnet-lite0":
        if data is not None:
            raise ModelError(f"{name} evaluates on its bundled data; got data folder {data}")
        return _efficientnet_lite_eval(model, photo_inputs("eval", limit).split(batch_size), progress)
    adapted = _adapted_forward(info.name, model) if is_folder_name(name) else None  # refusals before any batch
    batches = tqdm(
        iter_batches(name, "eval", batch_size, data=data, limit=limit),
        desc=f"fp32 {name}",
        unit="batch",
        disable=not progress,
    )
    if info.task == "text":
        if adapted is not None:
            return _encoder_folder_eval(info.name, model, adapted, batches, data)
        embeddings = torch.cat([encode(model, inputs) for inputs, _ in batches])
        sentences = text_order("eval", limit, data)
        reference = sentence_transformers_embeddings(sentences, batch_size)
        result: dict[str, Any] = {
            "model": name,
            "n": len(embeddings),
            "sentences": _sentence_count(data),
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


def _sentence_count(data: str | None) -> int:
    """Sentences in the whole corpus, or in the text file ``data`` (distinct, non-empty lines)."""
    if data is None:
        return len(corpus.load_sentences())
    return len(corpus.text_file_sentences(data))


def _adapted_forward(name: str, model: torch.nn.Module):
    """The float forward of the neutral structure the adapter makes of an encoder folder's model."""
    from quant.model import Forward, adapt

    return Forward(adapt(model, name, "bert"))


@torch.no_grad()
def _encoder_folder_eval(name: str, model: torch.nn.Module, forward, batches, data: str | None) -> dict[str, Any]:
    """The adapter's float forward against transformers' forward of an encoder folder's model."""
    ours, theirs = [], []
    for inputs, _ in batches:
        ours.append(torch.nn.functional.normalize(forward(inputs), dim=-1))
        theirs.append(encode(model, inputs))
    metrics = text_metrics(torch.cat(ours), torch.cat(theirs))
    return {"model": name, "n": sum(len(e) for e in ours), "sentences": _sentence_count(data),
            "cosine_vs_transformers": metrics["cosine"], "nn_agreement_vs_transformers": metrics["nn_agreement"]}


@torch.no_grad()
def _efficientnet_lite_eval(model: torch.nn.Module, batches, progress: bool) -> dict[str, Any]:
    """timm's tf_efficientnet_lite0 against efficientnet_lite_pytorch's EfficientNet holding the same tensors."""
    from tqdm import tqdm

    ours = torch.cat([model(images) for images in tqdm(batches, desc="fp32 efficientnet-lite0", unit="batch",
                                                       disable=not progress)])
    result: dict[str, Any] = {
        "model": "efficientnet-lite0",
        "n": len(ours),
        "photographs": len(photos.split_names("eval")),
        "cosine_vs_efficientnet_lite_pytorch": None,
        "top1_agreement_vs_efficientnet_lite_pytorch": None,
        "max_abs_diff_vs_efficientnet_lite_pytorch": None,
    }
    reference = efficientnet_lite_reference(model)
    if reference is not None:
        theirs = torch.cat([reference(images) for images in batches])
        result["cosine_vs_efficientnet_lite_pytorch"] = float(
            torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).mean())
        result["top1_agreement_vs_efficientnet_lite_pytorch"] = 100.0 * float(
            (ours.argmax(-1) == theirs.argmax(-1)).double().mean())
        result["max_abs_diff_vs_efficientnet_lite_pytorch"] = float((ours - theirs).abs().max())
    return result


def efficientnet_lite_reference(model: torch.nn.Module) -> torch.nn.Module | None:
    """efficientnet_lite_pytorch's own EfficientNet-Lite0 (in eval mode) holding the tensors of timm's
    tf_efficientnet_lite0 ``model`` under the wheel's names; None if that package is not installed."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    reference = EfficientNet.from_name("efficientnet-lite0")
    names = efficientnet_lite_names(model)
    reference.load_state_dict({names[k]: v for k, v in model.state_dict().items()})
    return reference.eval()
