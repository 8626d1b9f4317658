"""Image presets as pure numpy batch functions: decode once (prepare / predict), augment per epoch.

Images travel through Ray Data as uint8 (N, S, S, 3): four times smaller than float32, and the
model owns normalisation, so nothing here can drift from what the model expects.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fracture.core.names import AUGMENTS, IMAGE, PATH, REASON

# The seed notebook's Keras ImageDataGenerator settings.
ROTATION_DEG = 20.0
SHIFT_FRACTION = 0.1
ZOOM_RANGE = (0.9, 1.1)


# PIL modes with more than 8 bits per pixel: 16-bit PNG / TIFF greyscale, 32-bit integer, float.
# PIL's convert("L") clips these at 255 instead of scaling them, so a 12- or 16-bit X-ray decodes
# almost all white; decode_resize windows them to 8 bits itself (see _window).
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
KEPT_MODES = ("L", "RGB")  # decoded as stored: L replicated to 3 channels, RGB kept in colour


def conversion(mode: str) -> str:
    """What decode_resize does to the pixel values of an image in PIL `mode`; "" for KEPT_MODES."""
    if mode in KEPT_MODES:
        return ""
    if mode in HIGH_BIT_MODES:
        return "windowed to 8 bits (the image's own min..max stretched to 0..255)"
    if mode.endswith(("A", "a")):  # RGBA, LA, PA, RGBa, La
        return "converted to greyscale, alpha dropped"
    if mode == "P":
        return "palette converted to greyscale"
    return "converted to greyscale"


def decode_resize(path: str | Path, size: int, *, allow_truncated: bool = False) -> np.ndarray:
    """Read one image file as uint8 (size, size, 3).

    Greyscale X-rays are replicated to 3 channels (VGG16 expects RGB). The resize is to a square,
    as the seed's `target_size=(224, 224)` did; FracAtlas images are roughly square already.
    High-bit-depth images (HIGH_BIT_MODES) are windowed to 8 bits first; see `conversion`.
    """
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated  # per process; only the loader decides this
    with Image.open(path) as img:
        if img.mode in HIGH_BIT_MODES:
            img = _window(img)
        img = img.convert("L").convert("RGB") if img.mode != "RGB" else img.convert("RGB")
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _window(img):
    """A > 8-bit greyscale image as mode L, its own min..max stretched linearly to 0..255.

    min..max rather than percentiles (e.g. 1st..99.5th): the map stays linear and clips nothing,
    so relative densities are what an 8-bit export of the same film would show, and the brightest
    pixels, cortical bone and implants, keep their detail instead of saturating. A 12-bit image in
    a 16-bit container still fills 0..255, which scaling by the container's depth would not do.
    """
    from PIL import Image

    pixels = np.asarray(img, dtype=np.float32)  # (H, W)
    finite = pixels[np.isfinite(pixels)]  # mode F may hold nan / inf
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scaled = np.clip((pixels - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(pixels)
    return Image.fromarray(np.rint(np.nan_to_num(scaled) * 255).astype(np.uint8))  # uint8 (H, W): mode L


def decode_or_reason(path: str | Path, size: int, *, allow_truncated: bool = False) -> tuple[np.ndarray | None, str]:
    """(decode_resize's image, "") or (None, why the file cannot be decoded, one line)."""
    try:
        return decode_resize(path, size, allow_truncated=allow_truncated), ""
    except Exception as exc:  # a corrupt file can make PIL raise nearly anything (OSError, SyntaxError, ...)
        return None, unreadable_reason(exc)


def unreadable_reason(exc: Exception) -> str:
    """A decode error as one line that starts with the manifest's status word (unreadable / truncated)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "unreadable: not an image PIL can open"
    if isinstance(exc, FileNotFoundError):
        return "unreadable: no such file"
    text = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    if "truncated" in text:
        return f"truncated: {text}; data.allow_truncated=true loads what decodes"
    return f"unreadable: {type(exc).__name__}: {text}"


def decode_checked(paths, size: int, *, allow_truncated: bool = False, map_fn=map) -> tuple[np.ndarray, np.ndarray]:
    """Decode every path that decodes; say why for the rest.

    Args:
        map_fn: how to run decode_or_reason over `paths` (the builtin map, or a thread pool's).
    Returns:
        (images uint8 (N, size, size, 3), black where a file did not decode; reasons (N,) str,
        "" where it did).
    """
    decoded = list(map_fn(lambda p: decode_or_reason(p, size, allow_truncated=allow_truncated), paths))
    blank = np.zeros((size, size, 3), np.uint8)
    images = [blank if image is None else image for image, _ in decoded]
    return np.stack(images) if images else blank[None][:0], np.array([reason for _, reason in decoded], dtype=str)


def decode_batch(
    batch: dict[str, np.ndarray], *, size: int, allow_truncated: bool = False, mark_unreadable: bool = False
) -> dict[str, np.ndarray]:
    """Ray Data batch fn: {path, ...} -> the same batch with IMAGE (N, size, size, 3) uint8 and no path.

    Args:
        mark_unreadable: instead of raising on the first file that does not decode, give each such
            row a black image and its reason in REASON ("" for the rows that decoded), so one bad
            file cannot sink a batch of good ones (see decode_checked).
    """
    out = {k: v for k, v in batch.items() if k != PATH}
    if mark_unreadable:
        out[IMAGE], out[REASON] = decode_checked(batch[PATH], size, allow_truncated=allow_truncated)
    else:
        out[IMAGE] = np.stack([decode_resize(p, size, allow_truncated=allow_truncated) for p in batch[PATH]])
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
