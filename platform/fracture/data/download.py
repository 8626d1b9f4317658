"""Fetch a dataset archive (http(s):// or file://), check its checksum, and unpack it into the data root.

`fetch("fracatlas", ...)` resolves the FracAtlas release (Abedeen et al., Scientific Data 2023,
CC BY 4.0; figshare article 22363012) through figshare's public API: the archive's current
download URL, size and MD5 as figshare computed them. Figshare re-issues file URLs when a
release is re-processed, so the API, not a fixed URL, is the source; the MD5 it publishes
checks the bytes, and the SHA-256 of what was fetched is logged so a cluster can pin it
(`--sha256`) for every later download.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from fracture.core.errors import DataError

log = logging.getLogger(__name__)

FRACATLAS = "fracatlas"
FRACATLAS_API = "https://api.figshare.com/v2/articles/22363012"
FRACATLAS_FILE = "FracAtlas.zip"


def fetch(url: str, dest: str | Path, *, sha256: str | None = None) -> Path:
    """Fetch a dataset archive, verify it, unpack zip/tar into `dest`.

    Args:
        url: the archive, or a single file (copied into `dest` as is); "fracatlas" for the
            FracAtlas release on figshare (resolved through its API, MD5 checked).
        dest: the folder to unpack into (created).
        sha256: expected hex digest of the downloaded bytes; None skips the check.
    Returns:
        The data root: the folder under `dest` that holds `dataset.csv`, else `dest`. When that
        already exists nothing is fetched, so a job can pass `--download` on every run.
    """
    dest = Path(dest).expanduser()
    if _data_root(dest):
        return _data_root(dest)
    md5 = None
    if url == FRACATLAS:
        url, md5 = _figshare_file(FRACATLAS_API, FRACATLAS_FILE)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url) as response:
                shutil.copyfileobj(response, tmp)
        except (OSError, ValueError) as exc:
            os.unlink(tmp.name)
            raise DataError(f"cannot download {url}: {exc}") from None
    archive = Path(tmp.name)
    digest = _digest(archive, "sha256")
    if sha256 and digest != sha256.lower():
        archive.unlink()
        raise DataError(f"checksum mismatch for {url}: expected {sha256}, got {digest}")
    if md5 and _digest(archive, "md5") != md5:
        archive.unlink()
        raise DataError(f"checksum mismatch for {url}: figshare publishes MD5 {md5}, the download differs")
    log.info("fetched %s: sha256 %s (pass --sha256 %s to pin it)", url, digest, digest)
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


def _figshare_file(api: str, name: str) -> tuple[str, str]:
    """(download URL, MD5) of the file `name` in the figshare article at `api`."""
    try:
        with urllib.request.urlopen(api) as response:
            files = json.load(response).get("files", [])
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the FracAtlas release from {api}: {exc}") from None
    found = next((f for f in files if f.get("name") == name), None)
    if found is None:
        raise DataError(f"{api} lists no {name} (it lists {', '.join(f.get('name', '?') for f in files) or 'nothing'})")
    return found["download_url"], found.get("computed_md5") or found.get("supplied_md5")


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
