"""fracture.data.synthetic: a FracAtlas-layout dataset, deterministic for its seed."""

import csv

import numpy as np
import pytest
from PIL import Image

from fracture.data.synthetic import CSV_COLUMNS, generate

N = 60


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synthetic"), n=N, seed=0, min_size=40, max_size=64)


@pytest.fixture(scope="module")
def rows(root):
    with open(root / "dataset.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_layout(root):
    for sub in ("images/Fractured", "images/Non_fractured", "annotations/yolo"):
        assert (root / sub).is_dir(), sub
    assert (root / "dataset.csv").is_file()
    images = list((root / "images").glob("*/*.jpg"))
    assert len(images) == N
    assert len(list((root / "annotations/yolo").glob("*.txt"))) == N


def test_csv_has_fracatlas_columns(root, rows):
    with open(root / "dataset.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == CSV_COLUMNS
    assert header[0] == "image_id" and "fractured" in header and "hardware" in header
    assert len(rows) == N
    assert len({r["image_id"] for r in rows}) == N
    for r in rows:
        assert all(r[c] in ("0", "1") for c in CSV_COLUMNS[1:] if c != "fracture_count")
        assert sum(int(r[p]) for p in ("hand", "leg", "hip", "shoulder", "mixed")) == 1
        assert sum(int(r[v]) for v in ("frontal", "lateral", "oblique")) >= 1


def test_class_ratio_resembles_fracatlas(rows):
    positives = sum(int(r["fractured"]) for r in rows)
    assert 0.10 <= positives / N <= 0.30  # FracAtlas: 717 of 4083 (17.6%)


def test_images_sit_in_their_class_folder_and_decode(root, rows):
    sizes, modes = [], set()
    for r in rows:
        folder = "Fractured" if r["fractured"] == "1" else "Non_fractured"
        path = root / "images" / folder / r["image_id"]
        assert path.is_file(), path
        with Image.open(path) as img:
            modes.add(img.mode)
            sizes.append(img.size)
            img.load()
    assert modes == {"L", "RGB"}
    assert all(40 <= w <= 64 and 40 <= h <= 64 for w, h in sizes)
    assert len(set(sizes)) > 1


def test_yolo_boxes_for_fractures_only(root, rows):
    for r in rows:
        text = (root / "annotations/yolo" / r["image_id"].replace(".jpg", ".txt")).read_text()
        if r["fractured"] == "1":
            lines = text.strip().splitlines()
            assert len(lines) == 1, r["image_id"]
            cls, *box = lines[0].split()
            assert cls == "0"
            xc, yc, w, h = map(float, box)
            assert 0 < w <= 1 and 0 < h <= 1
            assert w / 2 <= xc <= 1 - w / 2 + 1e-6 and h / 2 <= yc <= 1 - h / 2 + 1e-6
        else:
            assert text == "", r["image_id"]


def test_deterministic_for_the_seed(root, tmp_path):
    again = generate(tmp_path / "again", n=N, seed=0, min_size=40, max_size=64)
    assert (again / "dataset.csv").read_bytes() == (root / "dataset.csv").read_bytes()
    first = sorted((root / "images").glob("*/*.jpg"))[0]
    twin = again / first.relative_to(root)
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(twin)))


def test_other_seed_differs(root, tmp_path):
    other = generate(tmp_path / "other", n=N, seed=1, min_size=40, max_size=64)
    assert (other / "dataset.csv").read_bytes() != (root / "dataset.csv").read_bytes()
