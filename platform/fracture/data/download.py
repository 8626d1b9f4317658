"""Fetch a dataset archive (http(s):// or file://), check its checksum, and unpack it into the data root."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from fracture.core.errors import DataError


def fetch(url: str, dest: str | Path, *, sha256: str | None = None) -> Path:
    """Fetch a dataset archive, verify it, unpack zip/tar into `dest`.

    Args:
        url: the archive, or a single file (copied into `dest` as is).
        dest: the folder to unpack into (created).
        sha256: expected hex digest of the downloaded bytes; None skips the check.
    Returns:
        The data root: the folder under `dest` that holds `dataset.csv`, else `dest`. When that
        already exists nothing is fetched, so a job can pass `--download` on every run.
    """
    dest = Path(dest).expanduser()
    if _data_root(dest):
        return _data_root(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url) as response:
                shutil.copyfileobj(response, tmp)
        except (OSError, ValueError) as exc:
            os.unlink(tmp.name)
            raise DataError(f"cannot download {url}: {exc}") from None
    archive = Path(tmp.name)
    digest = _sha256_file(archive)
    if sha256 and digest != sha256.lower():
        archive.unlink()
        raise DataError(f"checksum mismatch for {url}: expected {sha256}, got {digest}")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)  # zipfile strips absolute paths and ".." itself
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")  # refuses links and paths outside dest
    else:
        os.replace(archive, dest / (Path(urllib.parse.urlparse(url).path).name or "download"))
    archive.unlink(missing_ok=True)
    return _data_root(dest) or dest


def _data_root(dest: Path) -> Path | None:
    """`dest` or its one subfolder holding dataset.csv (archives often wrap a top folder)."""
    found = sorted(dest.glob("dataset.csv")) + sorted(dest.glob("*/dataset.csv"))
    return found[0].parent if found else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
