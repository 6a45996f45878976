"""Data-free calibration images for CNNs with BatchNorm: synthesized so that the network's own activations
match the statistics its BatchNorms recorded in training.

* ``zeroq``: the plain matching. Gaussian images are optimized so that, at every BatchNorm input, the
  batch's per-channel mean and standard deviation equal the running ones:
  ``sum_l ||mu_l - mu_bn||^2 + ||sigma_l - sigma_bn||^2`` (batch statistics, no slack).
* ``dsg``: the seed's two changes against sample homogeneity.
  *Slack distribution alignment*: each sample's own per-channel statistics (over its pixels) are matched,
  and a deviation smaller than a margin costs nothing: ``||max(|mu_s - mu_bn| - m_l, 0)||^2`` (and the same
  for sigma), so samples may spread around the recorded statistics instead of collapsing onto them.
  *Layerwise sample enhancement*: sample ``i`` weighs layer ``i mod L``'s term twice, so each sample is
  pulled hardest by a different layer.

Choices where the seed leaves a detail open (or takes it from data this setting does not have), stated
here and in the README: the margin of layer ``l`` is ``SLACK`` times the mean over its channels of the
running standard deviation (for sigma: ``SLACK`` times the mean running sigma as well), a data-free
stand-in for a margin measured on real activations; both generators start from the same seeded Gaussian
images, take the same Adam steps, and add the same small prior (each image channel near zero mean and unit
spread, in the normalized input space), and after every step each pixel is clamped to what a real pixel can
be (0 to 1 before the model's normalization): unclamped, the images of both generators spread to about nine
times the real range on efficientnet-lite0, and the 8-bit input grid calibrated on them was nine times too
coarse. Images are cached by a hash of the model's weights, the bounds and the recipe.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from quant.quantizers import QuantError

GENERATORS = ("zeroq", "dsg")
SLACK = 0.1  #: dsg's margin, in units of a layer's mean running standard deviation


@dataclass(frozen=True)
class Recipe:
    generator: str
    images: int = 16
    batch: int = 8
    steps: int = 200
    lr: float = 0.2
    seed: int = 0
    slack: float = SLACK


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not bns:
        raise QuantError(f"data-free calibration needs BatchNorm statistics; {type(model).__name__} has no "
                         f"BatchNorm2d")
    return bns


def _loss(recipe: Recipe, seen: list[tuple[torch.nn.BatchNorm2d, torch.Tensor]], x: torch.Tensor):
    """The matching loss over every BatchNorm input ``seen`` in the forward (in the order they ran)."""
    total = x.new_zeros(())
    n = x.shape[0]
    layers = len(seen)
    for li, (bn, t) in enumerate(seen):
        mu_bn, sd_bn = bn.running_mean, torch.sqrt(bn.running_var + bn.eps)
        flat = t.flatten(2)  # [B, C, HW]
        if recipe.generator == "zeroq" or flat.shape[2] == 1:  # the batch's statistics (a 1x1 map has no other)
            mu, sd = flat.mean(dim=(0, 2)), torch.sqrt(flat.var(dim=(0, 2), correction=0) + bn.eps)
            total = total + (mu - mu_bn).pow(2).sum() + (sd - sd_bn).pow(2).sum()
            continue
        mu, sd = flat.mean(dim=2), torch.sqrt(flat.var(dim=2, correction=0) + bn.eps)  # each sample's own, [B, C]
        margin = recipe.slack * sd_bn.mean()
        per_sample = ((mu - mu_bn).abs() - margin).clamp_min(0).pow(2).sum(1) + (
            (sd - sd_bn).abs() - margin).clamp_min(0).pow(2).sum(1)
        weight = torch.ones(n, dtype=x.dtype)
        weight[torch.arange(n) % layers == li] = 2.0  # layerwise sample enhancement
        total = total + (per_sample * weight).sum() / n
    img = x.flatten(2)
    prior = img.mean(dim=2).pow(2).sum() / n + (img.std(dim=2, correction=0) - 1).pow(2).sum() / n
    return total + prior


def synthesize(model: torch.nn.Module, recipe: Recipe, shape: tuple[int, int, int], *,
               bounds: tuple[list[float], list[float]] | None = None, progress: bool = True) -> torch.Tensor:
    """``recipe.images`` calibration images [N, C, H, W] for ``model`` (in its normalized input space);
    ``bounds``: each channel's lowest and highest value there (pixels 0 and 1 after the normalization), kept
    after every step so that the images stay images and the input grid they calibrate fits real ones."""
    if recipe.generator not in GENERATORS:
        raise QuantError(f"unknown data-free generator {recipe.generator!r} (accepted: {', '.join(GENERATORS)})")
    model = model.eval()
    bns = _batchnorms(model)
    seen: list[tuple[torch.nn.BatchNorm2d, torch.Tensor]] = []
    handles = [bn.register_forward_pre_hook(lambda m, a: seen.append((m, a[0]))) for bn in bns]
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(recipe.seed)
    out = []
    try:
        batches = range(0, recipe.images, recipe.batch)
        bar = tqdm(total=len(batches) * recipe.steps, desc=f"synthesize ({recipe.generator})", disable=not progress,
                   leave=False)
        for start in batches:
            x = torch.randn((min(recipe.batch, recipe.images - start),) + tuple(shape), generator=gen)
            if bounds is not None:
                lo, hi = (torch.tensor(b, dtype=x.dtype).view(-1, 1, 1) for b in bounds)
                x = torch.maximum(torch.minimum(x, hi), lo)
            x.requires_grad_(True)
            opt = torch.optim.Adam([x], lr=recipe.lr)
            for _ in range(recipe.steps):
                seen.clear()
                opt.zero_grad()
                model(x)
                loss = _loss(recipe, seen, x)
                loss.backward()
                opt.step()
                if bounds is not None:
                    with torch.no_grad():
                        x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                bar.update()
            out.append(x.detach())
        bar.close()
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ptq2rtl" / "datafree"


def cached_images(model: torch.nn.Module, recipe: Recipe, shape: tuple[int, int, int], *,
                  bounds: tuple[list[float], list[float]] | None = None, progress: bool = True) -> torch.Tensor:
    """:func:`synthesize`, kept under ``$XDG_CACHE_HOME/ptq2rtl/datafree/`` by a hash of the model's tensors,
    the input shape, the bounds and the recipe (written atomically)."""
    h = hashlib.sha256(repr((sorted(asdict(recipe).items()), shape, bounds, torch.__version__)).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    path = _cache_dir() / f"{recipe.generator}-{h.hexdigest()[:24]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    images = synthesize(model, recipe, shape, bounds=bounds, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(images, tmp)
    os.replace(tmp, path)
    return images
