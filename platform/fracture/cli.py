"""The one argument parser: `[--config STUDY.yaml] [section.key=value ...] [--verbose]` (+ a job's few flags).

No --config means the default study, so `ray job submit -- python jobs/tune.py` works bare.
Errors the user can fix (bad config, missing data, unreachable MLflow, missing weights) end the
job with one clear line and exit status 2, not a traceback.

Nothing heavy is imported here (no ray, torch, mlflow or pandas), so `jobs/*.py --help` answers at
once: jobs import the rest after parsing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

from fracture.core.config import Config, ConfigError, load
from fracture.core.errors import StudyIncomplete, UserError
from fracture.core.redact import RedactingFilter, redact, redact_config

DEFAULT_STUDY = Path(__file__).resolve().parents[2] / "jobs" / "studies" / "demo.yaml"


def parser(description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"study YAML (default: {DEFAULT_STUDY.relative_to(DEFAULT_STUDY.parents[2])})",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument(
        "--verbose", action="store_true", help="also print Ray's, Tune's and MLflow's own progress messages and tables"
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. model.dropout=0.3 train.epochs=2")
    return p


def parse(
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
    p: argparse.ArgumentParser | None = None,
    check_paths: bool = True,
) -> tuple[Config, argparse.Namespace]:
    """Parse argv into (Config, the argparse namespace for job-specific flags).

    check_paths: check_job_paths on the command line's config; a job that runs another config
    (tune.py --resume runs the study's stored one) checks that one itself.
    """
    p = p or parser(description)
    args = p.parse_args(argv)
    study = args.config or (DEFAULT_STUDY if DEFAULT_STUDY.is_file() else None)
    with user_errors():
        cfg = load(study, args.overrides)
        if check_paths:
            check_job_paths(cfg)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(redact_config(cfg.to_dict()), sort_keys=False))
        sys.exit(0)
    return cfg, args


def scoring_flags(
    p: argparse.ArgumentParser, *, split_help: str, folder_help: str, out_help: str
) -> argparse.ArgumentParser:
    """Add the flags of the jobs that score a model (evaluate, predict): --model, --split, --folder, --out, --explain.

    Args:
        p: the job's parser (see `parser`).
        split_help, folder_help, out_help: what --split, --folder and --out mean for this job.
    Returns:
        `p`, with the five flags (all default to None, --explain to 0: the job fills in its defaults).
    """
    p.add_argument("--model", help="checkpoint dir or models:/<name>@<alias> (default: models:/fracture@champion)")
    p.add_argument("--split", help=split_help)
    p.add_argument("--folder", type=Path, help=folder_help)
    p.add_argument("--out", type=Path, help=out_help)
    p.add_argument("--explain", type=int, default=0, metavar="K", help="Grad-CAM: K most confident + K random images")
    return p


def _job_working_dir() -> Path | None:
    """The uploaded copy of the project this driver runs in, under `ray job submit --working-dir`."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor for the entrypoint
    try:
        uploaded = raw and json.loads(raw).get("runtime_env", {}).get("working_dir")
    except (ValueError, AttributeError):
        return None
    return Path.cwd().resolve() if uploaded else None


def check_job_paths(cfg: Config) -> None:
    """Refuse relative paths in a submitted job: they point into Ray's temporary copy of the project.

    That copy holds no .gitignored data/ or runs/, and Ray deletes it with the session, so a study
    stored there would be lost.
    """
    copy = _job_working_dir()
    if copy is None:
        return
    hint = (
        "this job runs in the copy of the project that --working-dir uploaded ({copy}), which holds "
        "no .gitignored files and is deleted with the Ray session: pass {key}=<absolute path>"
    )
    if "://" not in cfg.cluster.storage_path and Path(cfg.cluster.storage_path).is_relative_to(copy):
        raise ConfigError(
            f"cluster.storage_path={cfg.cluster.storage_path}: "
            + hint.format(copy=copy, key="cluster.storage_path")
            + " (or s3://..., gs://...)"
        )
    root = Path(cfg.data.root)
    if root.is_relative_to(copy) and not root.exists():
        raise ConfigError(f"data.root={root} does not exist: " + hint.format(copy=copy, key="data.root"))


# Loggers whose INFO lines are bookkeeping, not progress: MLflow creating or upgrading the tables of
# its sqlite store (MLflow itself keeps alembic's migration lines at WARNING), Optuna creating its
# study in the study's optuna.db or loading it again for --extend.
QUIET_LOGGERS = (
    "mlflow.store.db.utils",
    "optuna.storages._in_memory",
    "optuna.storages._rdb.storage",
    "optuna.study.study",
)
# urllib3 warns at every retry of an MLflow call that the job bounds and, when it gives up, reports itself.
RETRY_LOGGERS = ("urllib3.connectionpool",)


class _Formatter(logging.Formatter):
    """INFO as `time message`, so progress reads as a log; warnings and errors also name level and logger."""

    def __init__(self):
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")
        self._loud = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record) if record.levelno <= logging.INFO else self._loud.format(record)


def setup_logging(verbose: bool = False) -> None:
    """INFO logging to stderr; unless verbose, the short format and QUIET_LOGGERS at WARNING.

    Ray's own loggers are quieted by cluster.init_ray (they exist only once ray is imported).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        if verbose
        else _Formatter()
    )
    handler.addFilter(RedactingFilter())  # a tracking URI's password in anyone's log line
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    for name in RETRY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.ERROR)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's own 'you can fix this' exceptions into one line on stderr and exit 2.

    A UserError may arrive wrapped: the trial logger's TrackingError reaches the driver inside
    Tune's TuneError, so the whole chain of causes is searched.
    """
    try:
        yield
    except (StudyIncomplete, KeyboardInterrupt) as exc:
        print(f"interrupted: {redact(exc)}" if str(exc) else "interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        user_error = next((e for e in _chain(exc) if isinstance(e, UserError)), None)
        if user_error is not None:
            print(f"error: {redact(user_error)}", file=sys.stderr)
            sys.exit(2)
        shown = "".join(traceback.format_exception(exc))
        if redact(shown) != shown:  # MLflow's errors repeat the URI they failed on, password and all
            print(redact(shown), end="", file=sys.stderr)
            sys.exit(1)
        raise


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc, then what it was raised from or while handling, and so on."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
