"""Data-free calibration images (quant.datafree): ZeroQ's plain BatchNorm-statistics matching and DSG's slack
alignment with layerwise enhancement, on the bundled cnn-digits."""

from __future__ import annotations

import pytest
import torch

from quant import datafree
from quant.quantizers import QuantError


@pytest.fixture(scope="module")
def model():
    from ptq2rtl import models

    return models.load_model("cnn-digits")  # trained: its BatchNorms hold real statistics


def _matching_error(model, x) -> float:
    """How far the batch's per-channel statistics at every BatchNorm input lie from the recorded ones."""
    seen = []
    handles = [bn.register_forward_pre_hook(lambda m, a: seen.append((m, a[0])))
               for bn in model.modules() if isinstance(bn, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    err = 0.0
    for bn, t in seen:
        flat = t.flatten(2)
        err += float((flat.mean(dim=(0, 2)) - bn.running_mean).pow(2).sum())
        err += float((flat.std(dim=(0, 2), correction=0) - (bn.running_var + bn.eps).sqrt()).pow(2).sum())
    return err


@pytest.mark.parametrize("generator", datafree.GENERATORS)
def test_synthesized_images_match_the_batchnorm_statistics_better_than_their_gaussian_start(model, generator):
    recipe = datafree.Recipe(generator, images=4, batch=4, steps=30, lr=0.1)
    x = datafree.synthesize(model, recipe, (1, 32, 32), progress=False)
    start = torch.randn((4, 1, 32, 32), generator=torch.Generator().manual_seed(recipe.seed))
    assert x.shape == (4, 1, 32, 32) and torch.isfinite(x).all()
    assert _matching_error(model, x) < 0.2 * _matching_error(model, start)  # measured: 23 and 26 vs 603


def test_synthesis_is_deterministic_and_the_two_generators_differ(model):
    recipes = [datafree.Recipe(g, images=2, batch=2, steps=5) for g in ("dsg", "dsg", "zeroq")]
    a, b, c = (datafree.synthesize(model, r, (1, 32, 32), progress=False) for r in recipes)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_images_are_cached_by_model_and_recipe(model, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    recipe = datafree.Recipe("zeroq", images=2, batch=2, steps=3)
    first = datafree.cached_images(model, recipe, (1, 32, 32), progress=False)
    monkeypatch.setattr(datafree, "synthesize", lambda *a, **k: pytest.fail("synthesized again"))
    assert torch.equal(datafree.cached_images(model, recipe, (1, 32, 32), progress=False), first)
    assert len(list((tmp_path / "ptq2rtl" / "datafree").glob("*.pt"))) == 1


def test_a_model_without_batchnorm_or_an_unknown_generator_is_refused(model):
    with pytest.raises(QuantError, match="needs BatchNorm statistics; Sequential has no BatchNorm2d"):
        datafree.synthesize(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)), datafree.Recipe("dsg"), (1, 8, 8))
    with pytest.raises(QuantError, match=r"unknown data-free generator 'gan' \(accepted: zeroq, dsg\)"):
        datafree.synthesize(model, datafree.Recipe("gan"), (1, 8, 8))


def test_data_free_calibration_of_a_text_model_is_refused():
    from ptq2rtl import flows

    with pytest.raises(QuantError, match=r"--calib dsg synthesizes images from BatchNorm statistics: CNNs only"):
        flows.calibration_batches("minilm", calib="dsg")



def test_synthesized_pixels_stay_in_a_real_image_range(model):
    bounds = ([-0.75], [1.75])  # pixels 0 and 1 after cnn-digits' normalization
    x = datafree.synthesize(model, datafree.Recipe("dsg", images=2, batch=2, steps=20, lr=0.5), (1, 32, 32),
                            bounds=bounds, progress=False)
    assert float(x.min()) >= -0.75 and float(x.max()) <= 1.75
    assert float(x.max()) > 1.0  # the bound is reached, not just a range the images happen to keep
