"""The one image preprocessing used by training, export calibration, evaluation and the device.

Every image takes the same path: decode, honour EXIF orientation, RGB, squash to 224x224 with no crop
(Flickr8k in ../shared was squashed that way, so the camera's frames must be too), uint8.
The float scaling to [-1, 1] that MobileNetV2 wants lives inside the encoder model itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

INPUT_SIZE = 224


class BadImageError(ValueError):
    """A file that is not a readable image (corrupt, truncated, empty or another format)."""


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file fully into RGB, or raise BadImageError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            return ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImageError(f"{path}: not a readable image ({exc})") from exc


def to_model_input(image: Image.Image | np.ndarray) -> np.ndarray:
    """Squash any RGB image (PIL or HxWx3 uint8 array) to the encoder's uint8 [224, 224, 3] input."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8, copy=False))
    image = image.convert("RGB")
    if image.size != (INPUT_SIZE, INPUT_SIZE):
        image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
