"""Image presets as pure numpy batch functions: decode once (prepare / predict), augment per epoch.

Images travel through Ray Data as uint8 (N, S, S, 3): four times smaller than float32, and the
model owns normalisation, so nothing here can drift from what the model expects.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

IMAGE = "image"
LABEL = "label"
ID = "image_id"
PATH = "path"
ROW = "row"  # a train/val row's position in its decoded cache: seeds its augmentation

# The seed notebook's Keras ImageDataGenerator settings.
ROTATION_DEG = 20.0
SHIFT_FRACTION = 0.1
ZOOM_RANGE = (0.9, 1.1)


def decode_resize(path: str | Path, size: int, *, allow_truncated: bool = False) -> np.ndarray:
    """Read one image file as uint8 (size, size, 3).

    Greyscale X-rays are replicated to 3 channels (VGG16 expects RGB). The resize is to a square,
    as the seed's `target_size=(224, 224)` did; FracAtlas images are roughly square already.
    """
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated  # per process; only the loader decides this
    with Image.open(path) as img:
        img = img.convert("L").convert("RGB") if img.mode != "RGB" else img.convert("RGB")
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def decode_batch(batch: dict[str, np.ndarray], *, size: int, allow_truncated: bool = False) -> dict[str, np.ndarray]:
    """Ray Data batch fn: {path, ...} -> the same batch with IMAGE (N, size, size, 3) uint8 and no path."""
    images = np.stack([decode_resize(p, size, allow_truncated=allow_truncated) for p in batch[PATH]])
    out = {k: v for k, v in batch.items() if k != PATH}
    out[IMAGE] = images
    return out


def _affine(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    angle = math.radians(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    zoom = rng.uniform(*ZOOM_RANGE)
    tx, ty = rng.uniform(-SHIFT_FRACTION, SHIFT_FRACTION, size=2) * (w, h)
    # PIL wants the inverse map (output pixel -> input pixel), about the image centre.
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    cx, cy = w / 2, h / 2
    a, b, d, e = cos, sin, -sin, cos
    c = cx - a * (cx + tx) - b * (cy + ty)
    f = cy - d * (cx + tx) - e * (cy + ty)
    # Keras' default fill_mode is "nearest"; black fill is closer to an X-ray's background.
    out = Image.fromarray(image).transform(
        (w, h), Image.Transform.AFFINE, (a, b, c, d, e, f), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(out)


AUGMENTS = ("seed", "light", "none")
# light: flips + a shift of up to this share of the side (3 px at 64 px, the reference loop's ±3 px)
LIGHT_SHIFT_FRACTION = 0.05


def _light(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    dy, dx = (rng.integers(-round(LIGHT_SHIFT_FRACTION * n), round(LIGHT_SHIFT_FRACTION * n) + 1) for n in (h, w))
    # roll, not pad: no black border that a small image would learn to look for
    return np.roll(image, (int(dy), int(dx)), axis=(0, 1))


def augment(
    images: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    strength: str = "seed",
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Random train-time views of a batch.

    strength "seed" is the notebook's ImageDataGenerator: rotation ±20°, shift ±10%, zoom 0.9–1.1,
    horizontal and vertical flips. "light" is flips plus a shift of up to 5% of the side. "none"
    returns a copy.

    Args:
        images: uint8 (N, H, W, 3).
        rng: one generator for the whole batch (the caller's, never the global RNG), or
        seeds: one entropy value (or sequence) per image; image i then depends only on seeds[i],
            not on which batch or worker it landed in, so a run is reproducible under any batching.
        strength: one of AUGMENTS.
    Returns:
        uint8 (N, H, W, 3), a new array.
    """
    if strength not in AUGMENTS:
        raise ValueError(f"augment strength {strength!r} is not one of {', '.join(AUGMENTS)}")
    if (rng is None) == (seeds is None):
        raise ValueError("pass exactly one of rng= and seeds=")
    out = images.copy()
    if strength == "none":
        return out
    for i, image in enumerate(images):
        r = rng if seeds is None else np.random.default_rng(seeds[i])
        image = _affine(image, r) if strength == "seed" else _light(image, r)
        if r.random() < 0.5:
            image = image[:, ::-1]
        if r.random() < 0.5:
            image = image[::-1, :]
        out[i] = image
    return out
