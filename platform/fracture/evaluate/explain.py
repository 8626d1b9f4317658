"""Grad-CAM heatmaps for FractureNet (via the grad-cam package) and their check against the
FracAtlas YOLO fracture boxes (pointing game).

grad-cam pulls in cv2, scipy and matplotlib, so it is imported inside functions: importing
this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

Box = tuple[float, float, float, float]  # (x_center, y_center, width, height), relative to image size


def gradcam(net: nn.Module, images: torch.Tensor) -> np.ndarray:
    """Grad-CAM of the fracture logit for a batch.

    Args:
        net: an unwrapped FractureNet (not DDP), on any device; its train/eval mode is restored
            afterwards. Runs a backward pass, so parameter .grad fields are cleared.
        images: float images in [0, 1], shape (N, 3, H, W).

    Returns:
        Heatmaps (N, H, W), float32 in [0, 1] (each map min-max scaled by grad-cam).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if images.ndim != 4:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    # Target: the ReLU after the last conv (features[29]; features[30] is the final max-pool).
    # It is the deepest, most class-specific map that still has spatial extent: after the pool a
    # 224 input is 7x7 but a small one (e.g. 32x32) would be 1x1, a constant CAM. Hooking the ReLU
    # rather than the Conv2d also matters because VGG's ReLUs are in-place: a Conv2d hook would
    # save a tensor that is then overwritten (post-ReLU on CPU, pre-ReLU copy on GPU).
    target_layer = net.features[-2]
    was_training = net.training
    # Input requiring grad keeps the graph alive up to the target layer even when the backbone is
    # frozen (set_trainable_blocks(0)), and enable_grad overrides a caller's no_grad context.
    x = images.detach().float().requires_grad_(True)
    cam = GradCAM(model=net, target_layers=[target_layer])  # also puts net in eval mode
    try:
        with torch.enable_grad():
            # Column 0 of the (N, 1) logits is the fracture logit (sigmoid > 0.5 = fracture).
            heatmaps = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)] * len(x))
    finally:
        # Release the hooks explicitly rather than via `with GradCAM(...)`, whose __exit__
        # swallows IndexError.
        cam.activations_and_grads.release()
        net.train(was_training)
    return np.clip(np.nan_to_num(heatmaps.astype(np.float32)), 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Blend a heatmap onto an image with the JET colormap.

    Args:
        image: (H, W, 3) or (H, W), uint8 in [0, 255] or float in [0, 1].
        heatmap: (h, w) in [0, 1]; resized to (H, W) when it differs.

    Returns:
        uint8 RGB image (H, W, 3).
    """
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)  # grayscale X-ray -> (H, W, 3)
    mask = np.asarray(heatmap, dtype=np.float32)
    if mask.shape != img.shape[:2]:
        mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(np.clip(img, 0, 1), np.clip(mask, 0, 1), use_rgb=True)


def read_yolo_boxes(path: str | Path) -> list[Box]:
    """Boxes of a YOLO label file ("class xc yc w h" per line, relative coordinates).

    Returns:
        [(xc, yc, w, h), ...]; [] for an empty file (an image without fracture boxes).
    """
    boxes = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            _, xc, yc, w, h = line.split()[:5]
            boxes.append((float(xc), float(yc), float(w), float(h)))
    return boxes


def pointing_game(heatmap: np.ndarray, boxes: Sequence[Box]) -> bool | None:
    """Whether the heatmap's hottest pixel lies inside any box (edges included).

    Args:
        heatmap: (H, W); boxes are scaled by its width and height.
        boxes: relative YOLO boxes (xc, yc, w, h).

    Returns:
        True / False, or None when there are no boxes (nothing to point at).
    """
    if not boxes:
        return None
    h, w = heatmap.shape
    row, col = np.unravel_index(int(np.argmax(heatmap)), (h, w))
    x, y = (col + 0.5) / w, (row + 0.5) / h  # pixel centre, relative coordinates
    return any(abs(x - xc) <= bw / 2 and abs(y - yc) <= bh / 2 for xc, yc, bw, bh in boxes)


def save_grid(overlays: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, *, cols: int = 4) -> Path:
    """Write images (e.g. overlay() results) as a titled PNG grid.

    Args:
        overlays: (H, W, 3) uint8 images.
        titles: one per image (e.g. "p=0.91 y=1 hit").
        path: PNG file to write.
        cols: images per row.
    """
    from fracture.evaluate.plots import DPI, figure

    if len(overlays) != len(titles):
        raise ValueError(f"{len(overlays)} images but {len(titles)} titles")
    cols = max(1, min(cols, len(overlays)))
    rows = max(1, math.ceil(len(overlays) / cols))
    fig = figure(figsize=(3 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, title in zip(axes, overlays, titles, strict=False):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
