"""Grad-CAM heatmaps, overlays, YOLO boxes and the pointing game."""

import numpy as np
import pytest
import torch
from PIL import Image

from fracture.core.config import ModelConfig
from fracture.evaluate import explain
from fracture.model.network import build_model


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model(ModelConfig())[0]


def test_gradcam_on_fracturenet(net):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    net.train()
    heatmaps = explain.gradcam(net, images)
    assert heatmaps.shape == (3, 32, 32)
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert net.training  # mode restored
    assert not net.features[-2]._forward_hooks  # grad-cam hooks released


def test_gradcam_frozen_backbone_under_no_grad(net):
    torch.manual_seed(1)
    net.set_trainable_blocks(0)
    net.eval()
    try:
        with torch.no_grad():
            heatmaps = explain.gradcam(net, torch.rand(2, 3, 64, 64))
    finally:
        net.set_trainable_blocks(5)
    assert heatmaps.shape == (2, 64, 64) and heatmaps.max() > 0
    assert not net.training


def test_overlay_matches_image_size():
    heatmap = np.random.default_rng(0).random((8, 8))
    for image in (np.zeros((40, 30, 3), np.uint8), np.full((40, 30, 3), 0.5), np.zeros((40, 30))):
        out = explain.overlay(image, heatmap)
        assert out.shape == (40, 30, 3) and out.dtype == np.uint8


def test_read_yolo_boxes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("3 0.5 0.25 0.2 0.1\n\n0 0.1 0.2 0.3 0.4\n")
    assert explain.read_yolo_boxes(path) == [(0.5, 0.25, 0.2, 0.1), (0.1, 0.2, 0.3, 0.4)]
    (tmp_path / "empty.txt").write_text("")
    assert explain.read_yolo_boxes(tmp_path / "empty.txt") == []


def test_pointing_game():
    heatmap = np.zeros((10, 20))  # non-square: catches swapped x / y
    heatmap[2, 15] = 1.0  # peak at x = 15.5/20, y = 2.5/10
    assert explain.pointing_game(heatmap, [(0.75, 0.25, 0.1, 0.2)]) is True
    assert explain.pointing_game(heatmap, [(0.25, 0.75, 0.1, 0.2)]) is False
    assert explain.pointing_game(heatmap, [(0.2, 0.5, 0.1, 0.1), (0.8, 0.3, 0.2, 0.2)]) is True
    assert explain.pointing_game(heatmap, []) is None


def test_save_grid(tmp_path):
    images = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(5)]
    path = explain.save_grid(images, [f"image {i}" for i in range(5)], tmp_path / "grid.png", cols=3)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > img.size[1] > 100
    with pytest.raises(ValueError):
        explain.save_grid(images, ["one"], tmp_path / "bad.png")
