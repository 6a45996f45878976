"""Sentence embeddings (all-MiniLM-L6-v2's mean pooling) and the fidelity metrics of text models."""

from __future__ import annotations

import importlib.util
import inspect

import torch

from ptq2rtl.models.registry import minilm_folder, offline, quiet_transformers


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


@torch.no_grad()
def encode(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings of one tokenized batch with a transformers encoder (BertModel, DistilBertModel,
    RobertaModel); the inputs its forward does not take (DistilBERT's token_type_ids) are left out."""
    accepted = inspect.signature(model.forward).parameters
    return sentence_embeddings(model(**{k: v for k, v in inputs.items() if k in accepted}).last_hidden_state,
                               inputs["attention_mask"])


def sentence_transformers_embeddings(sentences: list[str], batch_size: int) -> torch.Tensor | None:
    """sentence-transformers' own encoding of ``sentences``, or None when it is not installed."""
    if importlib.util.find_spec("sentence_transformers") is None:
        return None
    offline()
    from sentence_transformers import SentenceTransformer

    with quiet_transformers():
        model = SentenceTransformer(str(minilm_folder()), device="cpu")
    return model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True).cpu()
