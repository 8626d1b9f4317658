"""What a study's directory already holds decides what a command may do there.

A study stores its resolved config beside its Tune experiment (`<storage>/<name>/config.yaml`) and a
record of what made it (`study.json`: the data it was made from, its MLflow parent run, finished or
not). From those: a new study claims a free name (or --overwrite replaces the old study);
`--resume DIR` runs the stored config and refuses a command line that would change it
(resume_config); `--extend DIR` runs it again with more trials, changing only EXTENDABLE keys
(extend_config), once the study has finished.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import yaml

from fracture.core import storage
from fracture.core.config import Config, ConfigError, flat, load, loads
from fracture.core.storage import StudyPaths
from fracture.data import pipeline, provenance

log = logging.getLogger(__name__)


def _data_fingerprint(cfg: Config) -> dict:
    recorded = provenance.recorded_provenance(pipeline.manifest_path(cfg)) or {}
    return {
        "root": recorded.get("root", str(Path(cfg.data.root).expanduser().resolve())),
        "images": recorded.get("images"),
    }


def claim(cfg: Config, *, overwrite: bool = False) -> None:
    """Make sure a new study does not mix with an earlier study stored under the same name.

    Tune would add the new trials to the old experiment and MLflow would file them under a parent
    run of the same name, so the earlier study's dir is refused, whatever its config (the same
    config may still be another study: other data, or just a rerun that would mix the results).
    --overwrite removes the earlier study's Tune and Train runs and starts afresh.

    Raises:
        ConfigError naming --resume, another name= and --overwrite.
    """
    paths = StudyPaths.of(cfg)
    base = paths.root
    parts = [*paths.parts, *(part for ext in storage.extensions(paths) for part in (ext.tune, ext.config))]
    if not any(storage.exists(part) for part in parts):
        return
    if overwrite:
        for part in parts:
            storage.remove(part)
        log.info("--overwrite: removed the earlier study %s in %s", cfg.name, base)
        return
    why = _difference(cfg, paths)
    raise ConfigError(
        f"a study named {cfg.name} already exists in {base}{f' ({why})' if why else ''}: continue it with "
        f"`python jobs/tune.py --resume {base}`, start another with name=<new name>, or replace it with --overwrite"
    )


def _difference(cfg: Config, paths: StudyPaths) -> str:
    """What the stored study was made from that this one is not ("" when nothing differs or nothing was stored)."""
    text = storage.read_text(paths.config)
    if text is not None:
        try:
            ours, theirs = flat(loads(text, where=paths.config).to_dict()), flat(cfg.to_dict())
        except ConfigError:
            return "its config.yaml no longer loads"
        differ = [f"{k}={ours[k]}" for k in ours if ours[k] != theirs.get(k)]
        if differ:
            return "made with " + ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
    stored = storage.read_text(paths.record)
    if stored is not None:
        made_from, now = json.loads(stored).get("data", {}), _data_fingerprint(cfg)
        if made_from.get("root") != now["root"]:
            return f"made from the images in {made_from.get('root')}"
        if made_from.get("images") != now["images"]:
            return f"made from another image list in {now['root']}"
    return ""


def study_record(paths: StudyPaths) -> dict:
    """The study's study.json ({} for a study from before it had one)."""
    text = storage.read_text(paths.record)
    return json.loads(text) if text else {}


def save_record(cfg: Config, paths: StudyPaths, parent_run_id: str, *, finished: bool = False) -> None:
    # finished: its last Tune run (first or an extension) ended and registered; what --extend asks
    record = {"name": cfg.name, "parent_run_id": parent_run_id, "data": _data_fingerprint(cfg), "finished": finished}
    storage.write_text(paths.record, json.dumps(record, indent=2) + "\n")


def save_config(cfg: Config, paths: StudyPaths | None = None) -> str:
    """Write the resolved config into the study's dir (default: cfg's own); returns where."""
    location = (paths or StudyPaths.of(cfg)).config
    storage.write_text(location, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return location


def resume_config(
    study: str | Path, *, config: str | Path | None = None, overrides: Sequence[str] = ()
) -> Config | None:
    """The config to continue the study in `study` with: the one stored with it.

    A resumed study keeps its config: its trials carry theirs in Tune's saved state, and ASHA and
    the searcher were built for it. So --config and overrides given with --resume may repeat what
    the study was started with (the original command plus --resume works), but one that would
    change it is refused. Overrides alone apply to the stored config; with --config, that file
    and the overrides must give the stored config.

    Args:
        study: what --resume names (the study's dir or its tune/ subdir).
        config, overrides: the command line's --config and section.key=value overrides.
    Returns:
        The stored config; None for a study saved before configs were stored with it (then the
        command line's config is all there is).
    Raises:
        ConfigError naming each key the command line would change.
    """
    location = StudyPaths.at(study).config
    text = storage.read_text(location)
    if text is None:
        if not (config or overrides):
            log.warning(
                "%s not found (a study from before configs were stored with it): resuming with the "
                "default study's config; pass the study's --config and overrides if it had others",
                location,
            )
        return None
    stored = loads(text, where=location)
    given = _given(text, location, config, overrides)
    differ = _changes(stored, given)
    if differ:
        raise ConfigError(
            f"--resume {study}: a resumed study keeps the config it was started with ({location}), "
            f"but the command line changes {'; '.join(differ)}: drop those to continue the study, "
            "or start a new one with another name="
        )
    return stored


def _given(text: str, location: str, config: str | Path | None, overrides: Sequence[str]) -> Config:
    """The config the command line gives: --config and overrides, or overrides on the stored one."""
    if config:
        return load(config, overrides)
    return loads(text, overrides, where=location)


def _changes(stored: Config, given: Config, allowed: Sequence[str] = ()) -> list[str]:
    """Each key outside `allowed` where the two differ, as "key=given (the study has stored)"."""
    ours, theirs = flat(stored.to_dict()), flat(given.to_dict())
    return [f"{k}={theirs[k]!r} (the study has {ours[k]!r})" for k in ours if ours[k] != theirs[k] and k not in allowed]


# What an extension may set anew: how many more trials, and how they run. The rest (space, epochs,
# data, objective) is what the earlier trials were measured with, which the sampler compares to.
EXTENDABLE = ("search.num_trials", "search.max_concurrent", "cluster.max_failures")


def extend_config(study: str | Path, *, config: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config of a finished study's next extension: its config.yaml with the command line's
    overrides (`search.num_trials=8`: 8 more trials), which may change EXTENDABLE keys only.

    Raises:
        ConfigError: the study cannot be extended (check_extendable), or an override changes another key.
    """
    paths = StudyPaths.at(study).extended(0)
    check_extendable(paths, study)
    text = storage.read_text(paths.config)
    given = _given(text, paths.config, config, overrides)
    differ = _changes(loads(text, where=paths.config), given, allowed=EXTENDABLE)
    if differ:
        raise ConfigError(
            f"--extend {study}: an extension keeps the study's config ({paths.config}) but for "
            f"{', '.join(EXTENDABLE)}, and the command line changes {'; '.join(differ)}: drop those, "
            "or start a new study with another name= (search.warm_start= can seed it with these trials)"
        )
    return given


def check_extendable(paths: StudyPaths, named: str | Path) -> None:
    """Refuse `--extend named` unless it is a finished study with its Optuna storage (optuna.db, local or remote).

    Raises:
        ConfigError saying which, and what to do instead.
    """
    where = f"--extend {named}"
    if storage.read_text(paths.config) is None:
        raise ConfigError(f"{where}: no study there ({paths.config} not found)")
    if not storage.exists(paths.optuna):
        raise ConfigError(
            f"{where}: the study has no Optuna storage ({paths.optuna} not found: it ran before studies "
            "kept one, or searched nothing), so no sampler can go on from its trials"
        )
    if not study_record(paths).get("finished"):
        last = ([paths, *storage.extensions(paths)])[-1]
        raise ConfigError(
            f"{where}: the study has not finished; continue it first with `python jobs/tune.py --resume {last.tune}`"
        )
