"""fracture.tune.search: study search spaces become Tune domains (no Ray cluster is started here)."""

from pathlib import Path

import pytest
from ray.tune.search import sample

from fracture.core.config import Config, ConfigError, load
from fracture.tune.space import points_to_evaluate, search_space

STUDIES = Path(__file__).resolve().parents[1] / "jobs" / "studies"


def _cfg(space, points=()):
    return Config.from_dict({"search": {"space": space, "points_to_evaluate": list(points)}})


def test_each_distribution_gives_its_tune_domain():
    cfg = _cfg(
        {
            "model.dropout": {"uniform": [0.2, 0.6]},
            "optim.lr_head": {"loguniform": [1.0e-5, 1.0e-3]},
            "model.hidden": {"quniform": [32, 256, 32]},
            "model.trainable_blocks": {"randint": [0, 6]},
            "optim.name": {"choice": ["adam", "adamw"]},
        }
    )
    space = search_space(cfg)

    dropout = space["model"]["dropout"]
    assert isinstance(dropout, sample.Float) and isinstance(dropout.get_sampler(), sample.Float._Uniform)
    assert (dropout.lower, dropout.upper) == (0.2, 0.6)

    lr = space["optim"]["lr_head"]
    assert isinstance(lr, sample.Float) and isinstance(lr.get_sampler(), sample.Float._LogUniform)
    assert (lr.lower, lr.upper) == (1.0e-5, 1.0e-3)

    hidden = space["model"]["hidden"]
    assert isinstance(hidden, sample.Float) and isinstance(hidden.get_sampler(), sample.Quantized)
    assert hidden.get_sampler().q == 32

    blocks = space["model"]["trainable_blocks"]
    assert isinstance(blocks, sample.Integer) and (blocks.lower, blocks.upper) == (0, 6)

    name = space["optim"]["name"]
    assert isinstance(name, sample.Categorical) and name.categories == ["adam", "adamw"]


def test_untouched_keys_keep_their_values():
    cfg = _cfg({"model.dropout": {"uniform": [0.2, 0.6]}})
    space = search_space(cfg)
    raw = cfg.to_dict()
    assert set(space) == set(raw)
    for section, values in raw.items():
        if section == "model":
            assert {k: v for k, v in space["model"].items() if k != "dropout"} == {
                k: v for k, v in values.items() if k != "dropout"
            }
        else:
            assert space[section] == values, section
    assert cfg.to_dict() == raw  # the config itself is not modified


def test_string_numbers_from_yaml_are_coerced(tmp_path):
    # PyYAML reads 1e-5 as a string; the bounds must reach Tune as floats.
    path = tmp_path / "study.yaml"
    path.write_text("search:\n  space:\n    optim.lr_head: {loguniform: [1e-5, 1e-3]}\n")
    lr = search_space(load(path))["optim"]["lr_head"]
    assert isinstance(lr, sample.Float) and (lr.lower, lr.upper) == (1e-5, 1e-3)


@pytest.mark.parametrize("study", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_real_studies_convert(study):
    cfg = load(study)
    space = search_space(cfg)
    for dotted in cfg.search.space:
        section, key = dotted.split(".")
        assert isinstance(space[section][key], sample.Domain), dotted
    for point in points_to_evaluate(cfg):
        assert set(point) == {f"config/{d.replace('.', '/')}" for d in cfg.search.space}


def test_unknown_distribution_raises_naming_it():
    with pytest.raises(ConfigError, match="gaussian") as info:
        search_space(_cfg({"model.dropout": {"gaussian": [0, 1]}}))
    assert "model.dropout" in str(info.value)


@pytest.mark.parametrize(
    "spec", [{"uniform": [0.1]}, {"loguniform": [0, 1]}, [0.1, 0.5], {"uniform": [0, 1], "choice": [1]}]
)
def test_bad_distribution_arguments_raise(spec):
    with pytest.raises(ConfigError, match=r"model\.dropout"):
        search_space(_cfg({"model.dropout": spec}))


@pytest.mark.parametrize(
    "dotted", ["data.image_size", "cluster.num_workers", "search.num_trials", "tracking.experiment"]
)
def test_infrastructure_keys_cannot_be_searched(dotted):
    with pytest.raises(ConfigError, match=dotted.replace(".", r"\.")):
        search_space(_cfg({dotted: {"choice": [1, 2]}}))


@pytest.mark.parametrize("dotted", ["seed", "model"])
def test_search_space_key_must_be_section_dot_key(dotted):
    with pytest.raises(ConfigError, match=dotted):
        search_space(load(None, [f"search.space={{{dotted}: {{randint: [0, 10]}}}}"]))


def test_points_to_evaluate_are_flat_and_completed_with_defaults():
    cfg = Config.from_dict(
        {
            "model": {"dropout": 0.4, "l2": 1.0e-4},
            "search": {
                "space": {
                    "model.dropout": {"uniform": [0.2, 0.6]},
                    "model.l2": {"loguniform": [1.0e-6, 1.0e-2]},
                    "optim.lr_head": {"loguniform": [1.0e-5, 1.0e-3]},
                },
                "points_to_evaluate": [
                    {"model.dropout": 0.5},
                    {"model.dropout": 0.3, "model.l2": 1.0e-3, "optim.lr_head": 2.0e-4},
                ],
            },
        }
    )
    points = points_to_evaluate(cfg)
    assert points == [
        {"config/model/dropout": 0.5, "config/model/l2": 1.0e-4, "config/optim/lr_head": 1.0e-4},
        {"config/model/dropout": 0.3, "config/model/l2": 1.0e-3, "config/optim/lr_head": 2.0e-4},
    ]


def test_no_points_gives_empty_list():
    assert points_to_evaluate(_cfg({"model.dropout": {"uniform": [0.2, 0.6]}})) == []
