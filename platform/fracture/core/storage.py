"""Where a study's files live, and reading and writing them the same way on a local disk or a URI.

A study's storage is `cluster.storage_path`: a local directory, or a URI (s3://, gs://, ...) that
every node of a cluster reaches. Under it, `<storage>/<name>/` holds the study:

    tune/         Tune's experiment (what `--resume` restores)
    train/        one Ray Train run per trial (checkpoints)
    config.yaml   the resolved config the study was started with
    study.json    what made it (data fingerprint), where it is tracked (MLflow parent run id), finished or not
    optuna.db     Optuna's study (sqlite): every trial the sampler has seen, so `--extend` can go on with it
                  (on remote storage the driver works on a local copy, `StudyPaths.optuna_local`)
    tune_ext<N>/, config_ext<N>.yaml   the N-th `--extend`: its Tune experiment and config

`StudyPaths` names each of those once. The functions below go through pyarrow's filesystems for
both kinds of location, so no caller tests for "://" itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fracture.core.config import Config

TUNE_DIR = "tune"
TRAIN_DIR = "train"
CONFIG_FILE = "config.yaml"
STUDY_FILE = "study.json"
OPTUNA_FILE = "optuna.db"
EXTENSION = "_ext"  # tune_ext1/, config_ext1.yaml: the first --extend


def is_remote(location: str | Path) -> bool:
    """A URI (s3://..., gs://...), not a path on this node's disk."""
    return "://" in str(location)


def local_or_uri(location: str | Path) -> str:
    """A URI unchanged; a local path absolute (Ray and pyarrow want both that way)."""
    return str(location) if is_remote(location) else str(Path(location).expanduser().resolve())


@dataclasses.dataclass(frozen=True)
class StudyPaths:
    """Every path of one study, from its directory `<storage>/<name>` (a local path or a URI).

    `extension` N > 0 names the N-th `--extend` run of the study: its own Tune dir and config; the
    Train runs, record and Optuna study are the study's.
    """

    root: str
    extension: int = 0

    @classmethod
    def of(cls, cfg: Config) -> StudyPaths:
        base = cfg.cluster.storage_path
        if is_remote(base):
            return cls(f"{base.rstrip('/')}/{cfg.name}")
        return cls(str(cfg.run_dir))  # the local default directory of the study's manifest, cache and store

    @classmethod
    def at(cls, study: str | Path) -> StudyPaths:
        """The study that `--resume study` names: its directory, its tune/ or one of its tune_ext<N>/."""
        root = local_or_uri(study).rstrip("/")
        head, _, last = root.rpartition("/")
        if last == TUNE_DIR:
            return cls(head)
        match = re.fullmatch(rf"{TUNE_DIR}{EXTENSION}(\d+)", last)
        return cls(head, int(match[1])) if match else cls(root)

    def extended(self, n: int) -> StudyPaths:
        """The paths of the study's n-th extension (0: the study's first run)."""
        return dataclasses.replace(self, extension=n)

    def _suffix(self) -> str:
        return f"{EXTENSION}{self.extension}" if self.extension else ""

    def join(self, *parts: str) -> str:
        return join(self.root, *parts)

    @property
    def tune(self) -> str:
        return self.join(TUNE_DIR + self._suffix())

    @property
    def train(self) -> str:
        return self.join(TRAIN_DIR)

    @property
    def config(self) -> str:
        stem, dot, ext = CONFIG_FILE.partition(".")
        return self.join(stem + self._suffix() + dot + ext)

    @property
    def record(self) -> str:
        return self.join(STUDY_FILE)

    @property
    def optuna(self) -> str:
        return self.join(OPTUNA_FILE)

    @property
    def optuna_local(self) -> Path:
        """The optuna.db that sqlite opens: `optuna` itself on local storage. sqlite needs a file on
        this disk, so a study on remote storage works on a copy under ~/.fracture/<name> (its
        Config.run_dir), which fracture.tune.optuna_store fetches before a Tune run and stores after it."""
        if is_remote(self.root):
            return Path.home() / ".fracture" / self.root.rpartition("/")[2] / OPTUNA_FILE
        return Path(self.optuna)

    @property
    def parts(self) -> tuple[str, ...]:
        """What the study dir holds of the study itself: the manifest, decoded cache and embedded
        MLflow store beside them are keyed by their inputs or shared, and outlive an --overwrite.
        (Its extensions' dirs are `extensions(paths)`.)"""
        return (self.tune, self.train, self.config, self.record, self.optuna)


def join(location: str, *parts: str) -> str:
    """`location`/parts, with "/" on a URI and the OS's separator on a local path."""
    return "/".join([location.rstrip("/"), *parts]) if is_remote(location) else str(Path(location, *parts))


def extensions(paths: StudyPaths) -> list[StudyPaths]:
    """The study's extensions on storage (tune_ext1/, tune_ext2/, ...), in order; [] when none."""
    found = [re.fullmatch(rf"{TUNE_DIR}{EXTENSION}(\d+)", name) for name in list_dir(paths.root)]
    return [paths.extended(n) for n in sorted(int(m[1]) for m in found if m)]


def _fs(location: str):
    import pyarrow.fs

    if is_remote(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), local_or_uri(location)


def read_text(location: str) -> str | None:
    """The file's text; None when there is no file there."""
    import pyarrow.fs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def write_bytes(location: str, content: bytes) -> None:
    fs, path = _fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(content)


def upload_dir(local: str | Path, location: str) -> None:
    """Copy a local directory's files to `location` (a URI or a local path)."""
    import pyarrow.fs

    fs, path = _fs(location)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)


def upload_file(local: str | Path, location: str) -> None:
    """Copy one local file to `location` (a URI or a local path)."""
    write_bytes(location, Path(local).read_bytes())


def download_file(location: str, local: str | Path) -> bool:
    """Copy the file at `location` to the local path `local`; False (and `local` untouched) when there is none.

    The copy is written beside `local` and renamed over it, so a failed download never leaves a torn
    file where sqlite would open it.
    """
    import pyarrow.fs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return False
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(local.name + ".part")
    with fs.open_input_stream(path) as f:
        partial.write_bytes(f.read())
    os.replace(partial, local)
    return True


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[Path | None]:
    """A path on this disk holding the file at `location` (itself when local, a temporary download
    of a URI), for readers such as sqlite that open files by name; None when there is no file there."""
    if not is_remote(location):
        yield Path(location) if Path(location).is_file() else None
        return
    with tempfile.TemporaryDirectory(prefix="fracture-") as tmp:
        local = Path(tmp, location.rstrip("/").rpartition("/")[2])
        yield local if download_file(location, local) else None


@contextlib.contextmanager
def local_dir(location: str) -> Iterator[Path]:
    """A directory on this disk holding what the directory at `location` holds (itself when local, a
    temporary download of a URI), for readers that open files by name (torch.load, MLflow's log_artifacts)."""
    import pyarrow.fs

    if not is_remote(location):
        yield Path(location)
        return
    fs, path = _fs(location)
    with tempfile.TemporaryDirectory(prefix="fracture-") as tmp:
        pyarrow.fs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield Path(tmp)


def list_dir(location: str) -> list[str]:
    """The names of what a directory holds; [] when there is no directory there."""
    import pyarrow.fs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        return []
    return [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(path))]


def exists(location: str) -> bool:
    import pyarrow.fs

    fs, path = _fs(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def remove(location: str) -> None:
    """Delete a file or a whole directory; nothing there is fine."""
    import pyarrow.fs

    fs, path = _fs(location)
    kind = fs.get_file_info(path).type
    if kind == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pyarrow.fs.FileType.File:
        fs.delete_file(path)
