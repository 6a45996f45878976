"""Real photographs for the ImageNet models, with nothing downloaded: those shipped inside scikit-image and
scikit-learn, each cut into ten 224x224 crops.

The photographs are named explicitly (natural scenes, objects, textures,
microscopy and astronomy; scikit-image's synthetic images, drawings and text
scans are left out); grayscale ones are repeated over three channels. Each is
resized so that its shorter side is 256 (bilinear, antialiased), then cut into
its center and four corner crops of 224x224 and their mirror images. The
splits are by photograph: every fourth in sorted name order, from the fourth
on, calibrates; the others evaluate. Crops are float32 in [0, 1]; a model's
normalization is the caller's.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import torch

from ptq2rtl.models.registry import ModelError

#: name -> (package, path of the file inside the package)
PHOTOGRAPHS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "brick": ("skimage", "data/brick.png"),
    "camera": ("skimage", "data/camera.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "coffee": ("skimage", "data/coffee.png"),
    "coins": ("skimage", "data/coins.png"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "ihc": ("skimage", "data/ihc.png"),
    "moon": ("skimage", "data/moon.png"),
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "rocket": ("skimage", "data/rocket.jpg"),
}
RESIZE = 256  # shorter side before cropping
CROP = 224
CROPS_PER_PHOTO = 10


def photo_path(name: str) -> Path:
    """The file of photograph ``name`` inside its installed package."""
    package, relative = PHOTOGRAPHS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"photograph {name}: the package {package} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ModelError(f"photograph {name}: no file {path} (the {package} installation lacks it)")
    return path


def split_names(split: str) -> list[str]:
    """The photographs of ``split``: ``calib`` every fourth in sorted name order from the fourth on, ``eval``
    the rest."""
    names = sorted(PHOTOGRAPHS)
    calib = names[3::4]
    if split == "calib":
        return calib
    if split == "eval":
        return [name for name in names if name not in calib]
    raise ModelError(f"unknown split {split!r}: expected 'calib' or 'eval'")


def load_photo(name: str) -> torch.Tensor:
    """Photograph ``name`` as float32 [3, H, W] in [0, 1]; grayscale repeated over the three channels."""
    import numpy as np
    from PIL import Image

    path = photo_path(name)
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    except OSError as exc:
        raise ModelError(f"photograph {name}: cannot read {path} ({exc})") from exc
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous() / 255.0


def ten_crops(image: torch.Tensor, resize: int = RESIZE, crop: int = CROP) -> torch.Tensor:
    """[10, C, crop, crop]: the center and the top-left, top-right, bottom-left, bottom-right crops of ``image``
    [C, H, W] resized to a shorter side of ``resize`` (bilinear, antialiased), then the same five mirrored
    left to right."""
    from torchvision.transforms.v2 import functional as TF

    resized = TF.resize(image, [resize], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    resized = resized.clamp(0.0, 1.0)  # the antialiasing filter overshoots [0, 1] by a few ulps
    height, width = resized.shape[-2:]
    corners = [((height - crop) // 2, (width - crop) // 2), (0, 0), (0, width - crop), (height - crop, 0),
               (height - crop, width - crop)]
    five = torch.stack([resized[:, top : top + crop, left : left + crop] for top, left in corners])
    return torch.cat([five, five.flip(-1)])


@cache
def photo_crops(split: str) -> torch.Tensor:
    """The crops of ``split``, float32 [10 * photographs, 3, 224, 224] in [0, 1], photograph by photograph
    in sorted name order; made once per process."""
    return torch.cat([ten_crops(load_photo(name)) for name in split_names(split)])
