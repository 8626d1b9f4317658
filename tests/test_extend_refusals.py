"""--extend and search.warm_start before Ray starts: which studies can be extended, with which
overrides, and what a warm start copies into the new study's Optuna storage. No Ray here."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from fracture import resume
from fracture.core import storage
from fracture.core.config import ConfigError
from fracture.core.storage import StudyPaths
from fracture.tune import optuna_store


def _optuna_study(paths: StudyPaths, name: str, trials: list[tuple[dict, float]], space: dict | None = None):
    """The study's optuna.db as OptunaSearch leaves it: trials keyed "config/<section>/<key>"."""
    space = space or {
        "config/model/dropout": optuna.distributions.FloatDistribution(0.2, 0.6),
        "config/model/l2": optuna.distributions.FloatDistribution(1e-6, 1e-3, log=True),
        "config/optim/lr_head": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True),
        "config/optim/lr_backbone": optuna.distributions.FloatDistribution(1e-5, 3e-4, log=True),
    }
    created = optuna.create_study(storage=optuna_store.optuna_storage(paths), study_name=name, direction="maximize")
    for params, value in trials:
        created.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))


POINTS = [
    (
        {
            "config/model/dropout": 0.5,
            "config/model/l2": 1e-3,
            "config/optim/lr_head": 1e-3,
            "config/optim/lr_backbone": 1e-4,
        },
        0.7,
    ),
    (
        {
            "config/model/dropout": 0.3,
            "config/model/l2": 1e-5,
            "config/optim/lr_head": 2e-4,
            "config/optim/lr_backbone": 2e-5,
        },
        0.8,
    ),
]


def _study(cfg, *, finished: bool = True, with_optuna: bool = True) -> StudyPaths:
    """What a study leaves in its dir once it ran: config.yaml, study.json and (when it searched) optuna.db."""
    paths = StudyPaths.of(cfg)
    resume.save_config(cfg, paths)
    storage.write_text(paths.record, json.dumps({"name": cfg.name, "parent_run_id": "parent-1", "finished": finished}))
    if with_optuna:
        _optuna_study(paths, cfg.name, POINTS)
    return paths


def test_a_finished_study_extends_with_more_trials_and_its_own_config(tiny_config):
    paths = _study(tiny_config())
    cfg = resume.extend_config(paths.root, overrides=["search.num_trials=8", "search.max_concurrent=2"])
    assert (cfg.search.num_trials, cfg.search.max_concurrent) == (8, 2)
    assert cfg.to_dict() | {"search": {}} == tiny_config().to_dict() | {"search": {}}


def test_an_extension_may_not_change_what_the_trials_were_measured_with(tiny_config):
    paths = _study(tiny_config())
    with pytest.raises(ConfigError, match=r"--extend .*train\.epochs=5 \(the study has 2\)"):
        resume.extend_config(paths.root, overrides=["search.num_trials=8", "train.epochs=5"])


def test_an_unfinished_study_is_refused_naming_the_resume(tiny_config):
    paths = _study(tiny_config(), finished=False)
    with pytest.raises(ConfigError, match=rf"not finished.*--resume {paths.tune}"):
        resume.extend_config(paths.root, overrides=["search.num_trials=8"])
    Path(paths.extended(1).tune).mkdir(parents=True)  # an interrupted extension: that is what to resume
    with pytest.raises(ConfigError, match=rf"--resume {paths.extended(1).tune}"):
        resume.extend_config(paths.root)


def test_a_study_without_optuna_storage_is_refused(tiny_config):
    paths = _study(tiny_config(), with_optuna=False)
    with pytest.raises(ConfigError, match="no Optuna storage"):
        resume.extend_config(paths.root)


def test_nothing_there_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no study there"):
        resume.extend_config(tmp_path / "nothing")


@pytest.fixture
def remote_study(tiny_config, tmp_path, monkeypatch):
    """A finished study on URI storage (file://: pyarrow's, as s3:// is, on this disk), whose driver
    wrote optuna.db in its local copy and stored it beside the study; the copy then gone, as on a
    fresh machine. Returns the study's config."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where the driver's copy lives (~/.fracture/<name>)
    cfg = tiny_config(f"cluster.storage_path=file://{tmp_path}/bucket")
    paths = _study(cfg)
    assert paths.root == f"file://{tmp_path}/bucket/{cfg.name}" and not storage.exists(paths.optuna)
    with optuna_store.stored(paths):  # the end of the Tune run that made it
        pass
    paths.optuna_local.unlink()
    return cfg


def test_a_study_on_remote_storage_extends_from_its_stored_optuna_study(remote_study):
    paths = StudyPaths.of(remote_study)
    assert resume.extend_config(paths.root, overrides=["search.num_trials=3"]).search.num_trials == 3
    optuna_store.fetch(paths, fresh=False)  # what the extension's driver does before its Tuner
    assert [(t.params, t.value) for t in optuna_store.optuna_trials(paths.optuna_local)[1]] == POINTS
    optuna_store.fetch(paths, fresh=True)  # a new study of that name starts with none
    assert not paths.optuna_local.exists()


def test_warm_start_reads_a_study_on_remote_storage(remote_study, tiny_config):
    cfg = tiny_config("name=later", f"search.warm_start={StudyPaths.of(remote_study).root}")
    assert optuna_store.warm_start(cfg, StudyPaths.of(cfg)) == 2


def test_extensions_have_their_own_tune_dir_and_config(tiny_config):
    paths = StudyPaths.of(tiny_config())
    second = paths.extended(2)
    assert (second.tune, second.config) == (paths.join("tune_ext2"), paths.join("config_ext2.yaml"))
    assert (second.train, second.optuna, second.record) == (paths.train, paths.optuna, paths.record)
    assert StudyPaths.at(second.tune) == second and StudyPaths.at(paths.tune) == paths
    for n in (2, 1):
        Path(paths.extended(n).tune).mkdir(parents=True)
    assert storage.extensions(paths) == [paths.extended(1), paths.extended(2)]


def test_overwrite_removes_the_extensions_and_optuna_storage(tiny_config):
    paths = _study(tiny_config())
    Path(paths.extended(1).tune).mkdir(parents=True)
    resume.claim(tiny_config(), overwrite=True)
    assert not storage.exists(paths.optuna) and storage.extensions(paths) == []


def test_warm_start_copies_the_earlier_trials_into_the_new_study(tiny_config):
    earlier = _study(tiny_config("name=earlier"))
    cfg = tiny_config("name=later", f"search.warm_start={earlier.root}")
    assert optuna_store.warm_start(cfg, StudyPaths.of(cfg)) == 2
    loaded = optuna.load_study(study_name="later", storage=f"sqlite:///{StudyPaths.of(cfg).optuna}")
    assert [(t.params, t.value) for t in loaded.trials] == [(p, v) for p, v in POINTS]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in loaded.trials)


def test_warm_start_needs_the_same_searched_keys(tiny_config):
    earlier = _study(tiny_config("name=earlier"))
    cfg = tiny_config(
        "name=later",
        f"search.warm_start={earlier.root}",
        "search.space={model.dropout: {uniform: [0.2, 0.6]}}",
        "search.points_to_evaluate=[]",
    )
    with pytest.raises(ConfigError, match=r"searched model\.dropout, model\.l2.*this one searches model\.dropout:"):
        optuna_store.warm_trials(cfg)


def test_warm_start_from_a_study_without_optuna_storage_is_refused(tiny_config):
    earlier = _study(tiny_config("name=earlier"), with_optuna=False)
    with pytest.raises(ConfigError, match="no Optuna study there"):
        optuna_store.warm_trials(tiny_config("name=later", f"search.warm_start={earlier.root}"))


def test_warm_start_leaves_out_trials_outside_the_new_space(tiny_config):
    earlier = _study(tiny_config("name=earlier"))
    narrower = (
        "search.space={model.dropout: {uniform: [0.4, 0.6]}, model.l2: {loguniform: [1.0e-6, 1.0e-3]}, "
        "optim.lr_head: {loguniform: [1.0e-4, 3.0e-3]}, optim.lr_backbone: {loguniform: [1.0e-5, 3.0e-4]}}"
    )
    cfg = tiny_config("name=later", f"search.warm_start={earlier.root}", narrower)
    assert [t.params["config/model/dropout"] for t in optuna_store.warm_trials(cfg)] == [0.5]
