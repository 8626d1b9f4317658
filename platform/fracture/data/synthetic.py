"""A small synthetic dataset in FracAtlas' exact layout, for demos and tests (no real X-rays needed).

Each image is a noisy grey "limb" with a bright bone shaft. Fractured images have the shaft broken by
a dark oblique gap with the distal fragment displaced: a local signal a CNN can learn in a few
epochs, with a YOLO box around it so Grad-CAM can be scored. As in FracAtlas, most images are
negative (717:3366), modes and sizes vary, and implants ("hardware") appear almost only in
fractured images.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CSV_COLUMNS = [
    "image_id",
    "hand",
    "leg",
    "hip",
    "shoulder",
    "mixed",
    "hardware",
    "multiscan",
    "fractured",
    "fracture_count",
    "frontal",
    "lateral",
    "oblique",
]
BODY_PARTS = ["hand", "leg", "hip", "shoulder", "mixed"]
VIEWS = ["frontal", "lateral", "oblique"]
POSITIVE_RATE = 717 / 4083


def _draw(rng: np.random.Generator, size: tuple[int, int], fractured: bool, hardware: bool):
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 40 + 25 * rng.random() + rng.normal(0, 12, (h, w))  # background + noise
    cx = w * rng.uniform(0.35, 0.65)
    tilt = rng.uniform(-0.25, 0.25)
    width = w * rng.uniform(0.10, 0.16)
    axis = cx + tilt * (yy - h / 2)  # shaft centre line per row
    img += 60 * (np.abs(xx - axis) < width * 2.2)  # soft tissue
    shaft = np.abs(xx - axis) < width
    box = None
    if fractured:
        y0 = h * rng.uniform(0.35, 0.65)
        slope = rng.uniform(-0.6, 0.6)
        gap = np.abs((yy - y0) - slope * (xx - axis)) < max(1.5, h * 0.025)
        below = (yy - y0) - slope * (xx - axis) > 0
        shift = width * rng.uniform(0.5, 0.9) * rng.choice([-1, 1])
        shaft = (shaft & ~below) | ((np.abs(xx - axis - shift) < width) & below)
        shaft &= ~gap
        bw, bh = 4 * width / w, 0.22
        box = (float(np.clip(cx / w, bw / 2, 1 - bw / 2)), float(np.clip(y0 / h, bh / 2, 1 - bh / 2)), bw, bh)
    img += 110 * shaft
    if hardware:  # a bright metal plate
        y1 = int(h * rng.uniform(0.1, 0.6))
        x1 = int(np.clip(cx - width * 0.4, 0, w - 2))
        img[y1 : y1 + int(h * 0.3), x1 : x1 + max(2, int(width * 0.8))] = 250
    return np.clip(img, 0, 255).astype(np.uint8), box


def generate(root: str | Path, *, n: int = 400, seed: int = 0, min_size: int = 64, max_size: int = 160) -> Path:
    """Write `n` synthetic X-rays in FracAtlas layout under `root` and return `root`.

    Layout: images/Fractured/*.jpg, images/Non_fractured/*.jpg, dataset.csv (FracAtlas columns),
    annotations/yolo/<id>.txt (class xc yc w h, relative; empty for negatives).
    """
    from PIL import Image

    root = Path(root)
    for sub in ("images/Fractured", "images/Non_fractured", "annotations/yolo"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_pos = max(2, round(n * POSITIVE_RATE))
    labels = rng.permutation([1] * n_pos + [0] * (n - n_pos))
    rows = []
    for i, fractured in enumerate(labels):
        image_id = f"IMG{i:07d}.jpg"
        hardware = rng.random() < (0.15 if fractured else 0.005)
        size = tuple(int(s) for s in rng.integers(min_size, max_size + 1, size=2))
        pixels, box = _draw(rng, size, bool(fractured), hardware)
        img = Image.fromarray(pixels, mode="L")
        if rng.random() < 0.3:  # FracAtlas mixes L and RGB files
            img = img.convert("RGB")
        folder = "Fractured" if fractured else "Non_fractured"
        img.save(root / "images" / folder / image_id, quality=92)
        (root / "annotations/yolo" / image_id.replace(".jpg", ".txt")).write_text(
            "0 {:.6f} {:.6f} {:.6f} {:.6f}\n".format(*box) if box else ""
        )
        part = BODY_PARTS[rng.choice(5, p=[0.45, 0.35, 0.08, 0.07, 0.05])]
        views = set(rng.choice(VIEWS, size=rng.integers(1, 3), replace=False))
        rows.append(
            {
                "image_id": image_id,
                **{p: int(p == part) for p in BODY_PARTS},
                "hardware": int(hardware),
                "multiscan": int(rng.random() < 0.2),
                "fractured": int(fractured),
                "fracture_count": int(fractured),
                **{v: int(v in views) for v in VIEWS},
            }
        )
    with open(root / "dataset.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    log.info("wrote %d synthetic images (%d fractured) to %s", n, n_pos, root)
    return root
