"""fracture.core.config: study files load, round-trip, coerce, and refuse what they cannot be."""

import re
from pathlib import Path

import pytest

from fracture.core.config import Config, ConfigError, load, resolve_paths

STUDIES = sorted((Path(__file__).resolve().parents[1] / "jobs" / "studies").glob("*.yaml"))


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_there_are_study_files():
    assert STUDIES, "jobs/studies/*.yaml not found"


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.stem)
def test_real_study_loads_and_round_trips(study):
    cfg = load(study)
    assert cfg.name == study.stem
    assert Config.from_dict(cfg.to_dict()) == cfg
    # A search study names real config paths (a single-run study such as seed_recipe has none).
    assert all(k.count(".") == 1 for k in cfg.search.space)
    assert bool(cfg.search.space) == (cfg.search.num_trials > 1)


def test_defaults_round_trip():
    cfg = load()
    assert cfg == Config.from_dict(cfg.to_dict())
    assert Config.from_dict({}) == Config()


def test_yaml_exponent_without_dot_is_coerced_to_float(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-5` as the string "1e-5".
    cfg = load(_write(tmp_path, "optim:\n  lr_head: 1e-5\n  lr_backbone: 3e-7\n"))
    assert isinstance(cfg.optim.lr_head, float) and cfg.optim.lr_head == pytest.approx(1e-5)
    assert cfg.optim.lr_backbone == pytest.approx(3e-7)


def test_override_wins_over_yaml(tmp_path):
    path = _write(tmp_path, "model:\n  dropout: 0.5\n  hidden: 64\n")
    cfg = load(path, ["model.dropout=0.3"])
    assert cfg.model.dropout == pytest.approx(0.3)
    assert cfg.model.hidden == 64  # untouched keys keep the YAML value
    cfg = load(path, ["optim.lr_head=1e-2", "train.epochs=7"])
    assert cfg.optim.lr_head == pytest.approx(1e-2) and cfg.train.epochs == 7


@pytest.mark.parametrize(
    "text, key",
    [
        ("nmae: x\n", "nmae"),
        ("model:\n  dropuot: 0.3\n", "model.dropuot"),
        ("optim:\n  lr: 0.1\n", "optim.lr"),
    ],
)
def test_unknown_yaml_key_raises_naming_it(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(_write(tmp_path, text))


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.dropuot=0.3", "model.dropuot"),
        ("modle.dropout=0.3", "modle"),
        ("seed.x=1", "seed.x"),
    ],
)
def test_unknown_override_key_raises_naming_it(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(None, [override])


def test_override_without_equals_raises():
    with pytest.raises(ConfigError, match="model.dropout"):
        load(None, ["model.dropout"])


@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  epochs: abc\n", "train.epochs"),
        ("train:\n  epochs: 2.5\n", "train.epochs"),
        ("model:\n  dropout: [1]\n", "model.dropout"),
        ("model:\n  dropout: true\n", "model.dropout"),
        ("cluster:\n  use_gpu: maybe\n", "cluster.use_gpu"),
        ("model: 3\n", "model"),
    ],
)
def test_wrong_type_raises_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(_write(tmp_path, text))


def test_wrong_type_override_raises_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load(None, ["train.epochs=abc"])


def test_int_field_refuses_fractional_string(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load(_write(tmp_path, 'train:\n  epochs: "1.5"\n'))


def test_int_field_accepts_exponent_string(tmp_path):
    # 1e3 is a string to PyYAML; an integral value is fine for an int field.
    assert load(_write(tmp_path, "train:\n  shuffle_buffer: 1e3\n")).train.shuffle_buffer == 1000


@pytest.mark.parametrize(
    "value, expected",
    [
        ("true", True),
        ("false", False),
        ("yes", True),
        ("no", False),
        ("1", True),
        ("0", False),
        ('"True"', True),
        ('"no"', False),
    ],
)
def test_bool_coercion(value, expected):
    assert load(None, [f"cluster.use_gpu={value}"]).cluster.use_gpu is expected


def test_bool_refuses_other_ints():
    with pytest.raises(ConfigError, match=r"cluster\.use_gpu"):
        load(None, ["cluster.use_gpu=2"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.schedule=linear", "optim.schedule"),
        ("optim.name=sgd", "optim.name"),
        ("train.imbalance=focal", "train.imbalance"),
        ("train.threshold=f1", "train.threshold"),
        ("search.scheduler=pbt", "search.scheduler"),
        ("search.objective=f1", "search.objective"),
        ("search.rank_by=upper_bound", "search.rank_by"),
    ],
)
def test_choice_validation(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(None, [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.dropout=1.0", "model.dropout"),
        ("model.trainable_blocks=6", "model.trainable_blocks"),
        ("data.image_size=16", "data.image_size"),
        ("train.epochs=0", "train.epochs"),
        ("search.target_sensitivity=0", "search.target_sensitivity"),
        ("search.target_sensitivity=1.0", "search.target_sensitivity"),
    ],
)
def test_range_validation(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(None, [override])


def test_valid_choices_load():
    cfg = load(None, ["optim.schedule=cosine", "optim.name=adamw"])
    assert (cfg.optim.schedule, cfg.optim.name) == ("cosine", "adamw")


def test_the_objective_defaults_to_val_auroc_by_its_point_estimate():
    cfg = load(None)
    assert (cfg.search.objective, cfg.search.rank_by, cfg.search.target_sensitivity) == ("auroc", "point", 0.9)
    cfg = load(None, ["search.objective=specificity_at_sensitivity", "search.rank_by=lower_bound"])
    assert (cfg.search.objective, cfg.search.rank_by) == ("specificity_at_sensitivity", "lower_bound")


def test_replace_returns_a_new_config():
    cfg = Config()
    other = cfg.replace(train={"epochs": 1}, name="x")
    assert other.train.epochs == 1 and other.name == "x"
    assert other.train.batch_size_per_worker == cfg.train.batch_size_per_worker
    assert cfg.train.epochs == Config().train.epochs


def test_resolve_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(
        Config.from_dict(
            {
                "cluster": {"storage_path": "runs"},
                "data": {"root": "data/x", "manifest": ""},
                "model": {"weights": "imagenet"},
            }
        )
    )
    assert cfg.cluster.storage_path == str(tmp_path.resolve() / "runs")
    assert Path(cfg.cluster.storage_path).is_absolute()
    assert cfg.data.root == str(tmp_path.resolve() / "data" / "x")
    assert cfg.data.manifest == ""  # "" means "derive it later", not the cwd
    assert cfg.model.weights == "imagenet"

    remote = resolve_paths(
        Config.from_dict({"cluster": {"storage_path": "s3://bucket/fracture"}, "model": {"weights": "none"}})
    )
    assert remote.cluster.storage_path == "s3://bucket/fracture"
    assert remote.model.weights == "none"

    local_weights = resolve_paths(Config.from_dict({"model": {"weights": "w/vgg16.pth"}}))
    assert local_weights.model.weights == str(tmp_path.resolve() / "w" / "vgg16.pth")


def test_load_resolves_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load(None, ["cluster.storage_path=somewhere"])
    assert cfg.cluster.storage_path == str(tmp_path.resolve() / "somewhere")


def test_search_space_with_unknown_path_raises(tmp_path):
    text = "search:\n  space:\n    model.dropuot: {uniform: [0.1, 0.5]}\n"
    with pytest.raises(ConfigError, match=r"model\.dropuot"):
        load(_write(tmp_path, text))


def test_points_to_evaluate_with_unknown_path_raises():
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load(None, ["search.points_to_evaluate=[{optim.lr: 0.1}]"])


def test_missing_study_file_raises(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load(tmp_path / "nope.yaml")


def test_non_mapping_study_raises(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load(_write(tmp_path, "- a\n- b\n"))


def test_empty_study_file_is_refused(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="empty"):
        load(path)


def test_override_into_a_section_given_a_scalar_names_the_section(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("train: 5\n")
    with pytest.raises(ConfigError, match=r"^train: expected a mapping"):
        load(path, ["train.epochs=1"])


def test_override_into_an_empty_section_works(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("train:\nmodel: {dropout: 0.3}\n")
    assert load(path, ["train.epochs=1"]).train.epochs == 1


@pytest.mark.parametrize(
    "space, says",
    [
        ("{model.dropout: {uniform: [0.7, 0.2]}}", "low < high"),
        ("{optim.lr_head: {loguniform: [1.0e-3, 1.0e-5]}}", "low < high"),
        ("{optim.lr_head: {loguniform: [0, 1.0e-3]}}", "low > 0"),
        ("{model.dropout: {uniform: [0.2, 1.5]}}", "model.dropout=1.5"),
        ("{model.trainable_blocks: {randint: [0, 8]}}", "model.trainable_blocks=7"),
        ("{model.trainable_blocks: {randint: [0.5, 3]}}", "integers"),
        ("{model.l2: {choice: [1.0e-3, -1]}}", "model.l2=-1"),
        ("{model.dropout: {quniform: [0.1, 0.5, 0]}}", "step q"),
        ("{model.dropout: {uniform: [0.1, abc]}}", "numbers"),
        ("{model.dropout: {choice: []}}", "at least one"),
    ],
)
def test_search_space_is_checked_when_loaded_before_any_trial(space, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load(None, [f"search.space={space}", "search.points_to_evaluate=[]"])


def test_a_point_to_evaluate_outside_the_valid_range_is_refused():
    with pytest.raises(ConfigError, match=r"points_to_evaluate\.model\.dropout.*1\.2"):
        load(
            None,
            ["search.space={model.dropout: {uniform: [0.1, 0.3]}}", "search.points_to_evaluate=[{model.dropout: 1.2}]"],
        )


def test_sampled_extremes_inside_the_ranges_load():
    cfg = load(
        None,
        [
            "search.space={model.trainable_blocks: {randint: [0, 6]},"
            " optim.lr_backbone: {loguniform: [1.0e-6, 1.0e-3]}}",
            "search.points_to_evaluate=[]",
        ],
    )
    assert set(cfg.search.space) == {"model.trainable_blocks", "optim.lr_backbone"}


@pytest.mark.parametrize(("section", "key", "value"), [("model", "dropout", 1.5), ("model", "trainable_blocks", 7)])
def test_a_config_built_from_a_dict_is_validated_as_a_trial_gets_it(section, key, value):
    # Tune hands each trial a dict with sampled values; Config.from_dict is where the worker builds it.
    raw = Config().to_dict()
    raw[section][key] = value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        Config.from_dict(raw)
