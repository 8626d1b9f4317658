"""fracture.data.download: a dataset archive is verified, unpacked once, and its data root found."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from fracture.core.errors import DataError
from fracture.data import download, synthetic


@pytest.fixture
def archive(tmp_path) -> Path:
    """A zip wrapping a small FracAtlas-layout folder in a top folder, as the real archive does."""
    atlas = synthetic.generate(tmp_path / "atlas", n=6, seed=0, min_size=32, max_size=40)
    path = tmp_path / "fracatlas.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for file in atlas.rglob("*"):
            if file.is_file():
                zf.write(file, Path("FracAtlas") / file.relative_to(atlas))
    return path


def test_fetch_verifies_and_unpacks(archive, tmp_path):
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = download.fetch(archive.as_uri(), tmp_path / "data", sha256=digest)
    assert root == tmp_path / "data" / "FracAtlas" and (root / "dataset.csv").is_file()
    assert list((root / "images").rglob("*.jpg"))
    assert not list((tmp_path / "data").glob("*.part"))
    assert download.fetch("file:///nowhere.zip", tmp_path / "data", sha256=None) == root  # already there


def test_fetch_refuses_a_bad_checksum(archive, tmp_path):
    with pytest.raises(DataError, match="checksum mismatch"):
        download.fetch(archive.as_uri(), tmp_path / "data", sha256="0" * 64)
    assert not any((tmp_path / "data").iterdir())
