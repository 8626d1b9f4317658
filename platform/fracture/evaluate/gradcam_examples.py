"""Grad-CAM examples of a scored set: which images to explain (the most confident fracture calls plus
random others), their overlays with the YOLO fracture boxes, a grid, and the pointing-game score.

fracture.evaluate.explain computes the heatmaps; this module picks the images and draws them. Used by
jobs/evaluate.py (through evaluate.run) and jobs/predict.py, which pass the directory to write into.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fracture.core.names import ID, LABEL, PATH
from fracture.evaluate import explain, scoring
from fracture.model import engine
from fracture.model.network import FractureNet

DISPLAY_PX = 224  # overlays are drawn at least this big, whatever the model's input size
GRADCAM_BATCH = 16  # images per Grad-CAM backward pass (bounds activation memory)


def _choose(probs: np.ndarray, k: int, seed: int) -> list[tuple[int, str]]:
    """Row indices of the k highest probabilities, then k random others (seeded)."""
    order = np.argsort(-probs, kind="stable")
    top, rest = order[:k], order[k:]
    rand = np.random.default_rng(seed).choice(rest, size=min(k, rest.size), replace=False) if rest.size else []
    return [(int(i), "top") for i in top] + [(int(i), "random") for i in sorted(rand)]


def _draw_boxes(image: np.ndarray, boxes: list[explain.Box]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for xc, yc, bw, bh in boxes:
        draw.rectangle(
            [(xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h],
            outline=(0, 255, 0),
            width=max(1, w // 150),
        )
    return np.asarray(img)


def explain_images(
    net: FractureNet,
    frame: pd.DataFrame,
    probs,
    image_size: int,
    data_root: str | Path | None,
    out_dir: str | Path,
    k: int,
    *,
    seed: int = 0,
    allow_truncated: bool = False,
) -> dict[str, Any]:
    """Grad-CAM for the k most confident fracture calls plus k random other images, with a pointing game.

    Heatmaps are computed at the model's input size; overlays are drawn on the image decoded at
    max(image_size, DISPLAY_PX), with the YOLO fracture boxes (green) where
    `<data_root>/annotations/yolo/<id>.txt` exists. The pointing game counts explained images
    labelled fractured that have at least one box: a hit when the heatmap's peak lies in a box.

    Args:
        net: an unwrapped FractureNet (moved to the scoring device).
        frame: the scored rows (image_id, path, and label / hardware where known); probs: their scores.
        out_dir: gets one `<rank>_<reason>_<id>.png` overlay per image and `grid.png`.
    Returns:
        {"explained", "pointing_game" {images, hits, hit_rate (None without boxed fractured images)},
        "items" [{image_id, reason, probability, label, hit, overlay}], "grid"}.
    """
    probs = np.asarray(probs, dtype=np.float64).ravel()
    chosen = _choose(probs, k, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = frame.iloc[[i for i, _ in chosen]].reset_index(drop=True)
    heatmaps = _heatmaps(net, rows, image_size, allow_truncated)  # (K, S, S)
    shown = scoring.decode_all(rows[PATH], max(image_size, DISPLAY_PX), allow_truncated=allow_truncated)[0]
    yolo = Path(data_root) / "annotations" / "yolo" if data_root else None
    items, overlays, titles = [], [], []
    for rank, ((i, reason), row) in enumerate(zip(chosen, rows.itertuples(index=False), strict=True)):
        item, image, title = _explained(
            row._asdict(), reason, float(probs[i]), heatmaps[rank], shown[rank], yolo, out_dir / f"{rank:02d}_{reason}"
        )
        items.append(item)
        overlays.append(image)
        titles.append(title)
    grid = explain.save_grid(overlays, titles, out_dir / "grid.png") if overlays else None
    scored = [it["hit"] for it in items if it["hit"] is not None]
    return {
        "explained": len(items),
        "pointing_game": {
            "images": len(scored),
            "hits": int(sum(scored)),
            "hit_rate": sum(scored) / len(scored) if scored else None,
        },
        "items": items,
        "grid": str(grid) if grid else None,
    }


def _heatmaps(net: FractureNet, rows: pd.DataFrame, image_size: int, allow_truncated: bool) -> np.ndarray:
    """Grad-CAM of each row's image at the model's input size, in batches: (K, S, S)."""
    dev = engine.default_device()
    net.to(dev)
    images = torch.from_numpy(scoring.decode_all(rows[PATH], image_size, allow_truncated=allow_truncated)[0])
    return np.concatenate(
        [
            explain.gradcam(net, engine.to_model_input(images[j : j + GRADCAM_BATCH], dev))
            for j in range(0, len(images), GRADCAM_BATCH)
        ]
    )


def _explained(
    row: dict, reason: str, probability: float, heatmap: np.ndarray, shown: np.ndarray, yolo: Path | None, stem: Path
) -> tuple[dict[str, Any], np.ndarray, str]:
    """One explained image: its item (with the pointing game's verdict), its overlay (saved), its grid title."""
    from PIL import Image

    label = int(row.get(LABEL, -1))
    box_file = yolo / f"{Path(row[ID]).stem}.txt" if yolo else None
    boxes = explain.read_yolo_boxes(box_file) if box_file and box_file.is_file() else []
    hit = explain.pointing_game(heatmap, boxes) if label == 1 else None
    image = _draw_boxes(explain.overlay(shown, heatmap), boxes)
    path = stem.with_name(f"{stem.name}_{Path(row[ID]).stem}.png")
    Image.fromarray(image).save(path)
    implant = " implant" if int(row.get("hardware", -1)) == 1 else ""
    mark = {True: " hit", False: " miss", None: ""}[hit]
    title = f"{reason} p={probability:.3f} y={label if label >= 0 else '?'}{mark}{implant}"
    item = {
        "image_id": row[ID],
        "reason": reason,
        "probability": probability,
        "label": label,
        "boxes": len(boxes),
        "hit": hit,
        "overlay": str(path),
    }
    return item, image, title


def pointing_summary(result: dict[str, Any]) -> str:
    """One line on the Grad-CAM pointing game of explain_images' result."""
    game = result["pointing_game"]
    if not game["images"]:
        return (
            f"Grad-CAM: {result['explained']} images explained; none is a fractured image with a "
            "YOLO box, so no pointing-game score"
        )
    return (
        f"Grad-CAM pointing game: {game['hits']}/{game['images']} fractured images have their heatmap peak "
        f"inside a fracture box (hit rate {game['hit_rate']:.2f}); low rates mean the model looks elsewhere "
        "(e.g. at implants)"
    )
