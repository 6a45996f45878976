"""The FP32 figure of a model on its evaluation split."""

from __future__ import annotations

from typing import Any

import torch

from ptq2rtl import corpus
from ptq2rtl.models.data import iter_batches, text_order
from ptq2rtl.models.loading import load_model
from ptq2rtl.models.registry import ModelError, model_info
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
        reference = sentence_transformers_embeddings(sentences, batch_size)
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
