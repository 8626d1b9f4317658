"""fracture.data.download: a dataset archive is verified, unpacked once, and its data root found."""

import hashlib
import json
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


def test_fetch_fracatlas_takes_the_url_and_md5_that_figshares_api_publishes(archive, tmp_path, monkeypatch):
    """`--download fracatlas`: the article's file list names the archive's URL and MD5 (file:// here)."""
    listing = {"files": [{"name": "README.txt", "download_url": "file:///nowhere"}]}
    listing["files"].append(
        {
            "name": download.FRACATLAS_FILE,
            "download_url": archive.as_uri(),
            "computed_md5": hashlib.md5(archive.read_bytes()).hexdigest(),
        }
    )
    api = tmp_path / "article.json"
    api.write_text(json.dumps(listing))
    monkeypatch.setattr(download, "FRACATLAS_API", api.as_uri())
    root = download.fetch(download.FRACATLAS, tmp_path / "data")
    assert root == tmp_path / "data" / "FracAtlas" and (root / "dataset.csv").is_file()

    listing["files"][1]["computed_md5"] = "0" * 32  # bytes that are not the release's
    api.write_text(json.dumps(listing))
    with pytest.raises(DataError, match="figshare publishes MD5 0{32}, the download differs"):
        download.fetch(download.FRACATLAS, tmp_path / "other")
    assert not list((tmp_path / "other").iterdir())


def test_a_data_root_above_the_unpacked_folder_is_followed_into_it(archive, tmp_path):
    """The study's data.root may name the folder an archive was unpacked into (FracAtlas/ inside)."""
    from fracture.core.config import load

    download.fetch(archive.as_uri(), tmp_path / "data")
    cfg = load(None, [f"data.root={tmp_path / 'data'}"])
    assert cfg.data.root == str(tmp_path / "data" / "FracAtlas")
