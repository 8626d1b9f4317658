"""cluster.yaml (the `ray up` config) and jobs/studies/gpu_cluster.yaml, checked offline.

Schema checks use Ray's own `prepare_config` + `validate_config` (ray.autoscaler._private.util):
the two calls `ray up` makes before it talks to AWS (commands._bootstrap_config). They merge the
AWS defaults, validate against the ray-schema.json shipped in the Ray package (jsonschema), then
run Ray's cross-field checks. No network and no cloud credentials are needed.
"""

from __future__ import annotations

import copy
import importlib.metadata
import itertools
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from fracture.core import config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
STUDY = ROOT / "jobs" / "studies" / "gpu_cluster.yaml"

COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
# Ray fills these from its AWS defaults when they are missing, so its validator cannot notice their
# removal (a missing cluster_name silently becomes "default"): this project must set them itself.
MUST_SET = (
    "cluster_name",
    "max_workers",
    "upscaling_speed",
    "idle_timeout_minutes",
    "provider",
    "auth",
    "docker",
    "available_node_types",
    "head_node_type",
    "file_mounts",
    *COMMAND_LISTS,
)
# EC2 instance type -> (vCPUs, NVIDIA GPUs). Add a row when cluster.yaml uses a new type.
INSTANCES = {
    "m5.xlarge": (4, 0),
    "m5.2xlarge": (8, 0),
    "m5.4xlarge": (16, 0),
    "g4dn.xlarge": (4, 1),
    "g4dn.2xlarge": (8, 1),
    "g4dn.12xlarge": (48, 4),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.8xlarge": (32, 1),
    "g5.12xlarge": (48, 4),
    "g5.16xlarge": (64, 1),
    "g5.24xlarge": (96, 4),
    "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1),
    "g6.2xlarge": (8, 1),
    "g6.12xlarge": (48, 4),
}


def ray_validate(raw: dict) -> dict:
    """What `ray up` does with the YAML before any cloud call; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def study() -> config.Config:
    return config.load(STUDY)


def _commands(raw: dict) -> list[str]:
    cmds = [c for key in COMMAND_LISTS for c in raw.get(key) or []]
    for node_type in raw["available_node_types"].values():
        cmds += [c for key in ("initialization_commands", "worker_setup_commands") for c in node_type.get(key) or []]
    return cmds


def _head_and_workers(raw: dict) -> tuple[dict, dict[str, dict]]:
    types = raw["available_node_types"]
    return types[raw["head_node_type"]], {k: v for k, v in types.items() if k != raw["head_node_type"]}


def _docker_volumes(raw: dict) -> dict[str, str]:
    """container path -> host path for each `-v` / `--volume` in docker.run_options."""
    docker = raw["docker"]
    tokens = [t for opt in docker.get("run_options", []) + docker.get("head_run_options", []) for t in shlex.split(opt)]
    volumes = {}
    for flag, value in itertools.pairwise(tokens):
        if flag in ("-v", "--volume"):
            host, container = value.split(":")[:2]
            volumes[container] = host
    return volumes


# ---------------------------------------------------------------- Ray's own schema and checks


def test_ray_accepts_cluster_yaml(raw):
    prepared = ray_validate(raw)
    assert prepared["provider"] == {**prepared["provider"], "type": "aws", "region": "us-west-2"}
    assert prepared["cluster_name"] == "fracture"
    # setup_commands run on the head too (Ray prepends them to head_setup_commands).
    assert prepared["head_setup_commands"][: len(raw["setup_commands"])] == raw["setup_commands"]


def _drop(*path):
    def mutate(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _set(*path, value):
    def mutate(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_drop("head_node_type"), id="no-head_node_type"),
        pytest.param(_drop("provider"), id="no-provider"),
        pytest.param(_drop("available_node_types"), id="no-node-types"),
        pytest.param(_drop("available_node_types", "gpu_worker", "resources"), id="worker-without-resources"),
        pytest.param(_drop("available_node_types", "head", "node_config"), id="head-without-node_config"),
        pytest.param(_set("head_node_type", value="gpu"), id="head_node_type-not-a-type"),
        pytest.param(_set("max_worker", value=4), id="misspelt-top-level-key"),
        pytest.param(_set("available_node_types", "gpu_worker", "resources", "GPU", value=0.5), id="fractional-GPU"),
        pytest.param(_set("available_node_types", "gpu_worker", "min_workers", value=99), id="min-over-global-max"),
    ],
)
def test_ray_rejects_broken_copy(raw, mutate):
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises((ValueError, KeyError, jsonschema.ValidationError)):
        ray_validate(broken)


def test_keys_ray_would_default_are_set_here(raw):
    missing = [key for key in MUST_SET if key not in raw]
    assert not missing, f"cluster.yaml must set {missing} (Ray would silently use its AWS defaults)"


# ---------------------------------------------------------------- paths the commands rely on


def test_file_mounts_exist_in_repo(raw):
    assert raw["file_mounts"], "the project must be mounted on the nodes"
    for remote, local in raw["file_mounts"].items():
        assert remote.startswith("/"), f"file_mounts remote {remote!r} must be absolute"
        assert (ROOT / local).exists(), f"file_mounts {remote!r}: local {local!r} is not in the repo"


def test_commands_reference_mounted_and_existing_paths(raw):
    mounts = {remote.rstrip("/"): ROOT / local for remote, local in raw["file_mounts"].items()}
    installs = []
    for cmd in _commands(raw):
        for target in re.findall(r"pip install\b[^;&|]*?\s-e\s+(\S+)", cmd):
            target = target.strip("'\"").rstrip("/")
            assert any(target == m or target.startswith(m + "/") for m in mounts), (
                f"`pip install -e {target}` is not under a file_mounts path ({sorted(mounts)})"
            )
            installs.append(target)
        for token in re.split(r"[\s;&|()'\"=]+", cmd):  # mounted paths map back into the repo
            for remote, local in mounts.items():
                if token.startswith(remote + "/"):
                    assert (local / token[len(remote) + 1 :]).exists(), f"{token} (in {cmd!r}) is not in the repo"
    assert installs, "setup_commands must `pip install -e` the mounted project"
    # Job scripts and studies named anywhere, comments included, must exist.
    for rel in set(re.findall(r"\bjobs/[\w./-]+\.(?:py|yaml)\b", CLUSTER_YAML.read_text())):
        assert (ROOT / rel).is_file(), f"cluster.yaml mentions {rel}, which is not in the repo"


# ---------------------------------------------------------------- node types


def test_head_has_no_gpu_and_workers_do(raw):
    head, workers = _head_and_workers(raw)
    assert head["resources"].get("CPU", 0) > 0, "the head runs the driver and Ray Data tasks: give it CPUs"
    assert head["resources"].get("GPU") == 0, "head must advertise GPU: 0 so training lands on workers"
    assert INSTANCES[head["node_config"]["InstanceType"]][1] == 0, "head instance type has a GPU"
    assert any("--num-gpus=0" in c for c in raw["head_start_ray_commands"] if "ray start" in c), (
        "the head's `ray start` must pass --num-gpus=0"
    )
    gpu_types = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no worker node type offers GPUs"
    for name, node_type in workers.items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in INSTANCES, f"{name}: add {instance} (vCPUs, GPUs) to INSTANCES"
        vcpus, gpus = INSTANCES[instance]
        assert node_type["resources"].get("GPU", 0) == gpus, f"{name}: resources.GPU != {gpus} GPUs of {instance}"
        assert 0 < node_type["resources"].get("CPU", vcpus) <= vcpus, f"{name}: resources.CPU > {vcpus} vCPUs"


def test_worker_bounds_are_consistent(raw):
    head, workers = _head_and_workers(raw)
    assert head.get("max_workers", 0) == 0, "the head node type must not scale"
    for name, node_type in workers.items():
        lo, hi = node_type.get("min_workers", 0), node_type.get("max_workers", raw["max_workers"])
        assert 0 <= lo <= hi <= raw["max_workers"], f"{name}: need 0 <= min_workers <= max_workers <= global"
    assert sum(t.get("min_workers", 0) for t in workers.values()) <= raw["max_workers"]


def test_docker_image_pins_the_project_ray(raw):
    image = raw["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)-py3\d+-gpu", image)
    assert match, f"{image}: pin rayproject/ray[-ml]:<version>-py3XX-gpu, not a floating tag"
    assert match.group(1) == importlib.metadata.version("ray"), "cluster Ray must match the project's Ray"
    assert raw["docker"].get("container_name") and "pull_before_run" in raw["docker"]


def test_no_credentials_in_cluster_yaml():
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id", text, re.I), "credentials"
    assert "ssh_private_key:" not in re.sub(r"#.*", "", text), "no key paths: Ray generates a key pair"


# ---------------------------------------------------------------- the study that runs on it


def test_gpu_cluster_study_loads(study):
    assert study.name == "gpu_cluster"
    assert (study.data.image_size, study.model.weights, study.optim.schedule) == (224, "imagenet", "cosine")
    assert study.cluster.use_gpu and study.search.num_trials == 24
    assert set(study.search.space) == {
        "model.dropout",
        "model.l2",
        "optim.lr_head",
        "optim.lr_backbone",
        "model.trainable_blocks",
    }


def test_seed_point_lies_inside_the_space(study):
    for point in study.search.points_to_evaluate:
        assert set(point) == set(study.search.space)
        for dotted, value in point.items():
            ((kind, args),) = study.search.space[dotted].items()
            if kind == "choice":
                assert value in args, f"{dotted}={value} not in {args}"
            else:
                assert float(args[0]) <= value <= float(args[1]), f"{dotted}={value} outside {args}"


def test_study_fits_the_cluster(raw, study):
    _, workers = _head_and_workers(raw)
    total_gpus = sum(t["resources"].get("GPU", 0) * t.get("max_workers", raw["max_workers"]) for t in workers.values())
    per_trial = study.cluster.num_workers * (1 if study.cluster.use_gpu else 0)
    assert study.search.max_concurrent * per_trial <= total_gpus, "more concurrent GPU trials than cluster GPUs"
    assert any(
        study.cluster.cpus_per_worker <= t["resources"].get("CPU", 0) and t["resources"].get("GPU", 0) >= 1
        for t in workers.values()
    ), "no GPU node type has cluster.cpus_per_worker CPUs"
    # Multi-node: checkpoints on storage every node reaches, data on the shared volume in every container.
    assert "://" in study.cluster.storage_path or study.cluster.storage_shared
    shared = _docker_volumes(raw)
    for key in ("root", "manifest", "cache_dir"):
        path = getattr(study.data, key)
        assert any(path.startswith(c.rstrip("/") + "/") for c in shared), f"data.{key}={path} is not on a shared volume"
    # The tracking server the study names is the one the head starts.
    uri = urlparse(study.tracking.uri)
    assert uri.scheme == "http" and uri.hostname in ("127.0.0.1", "localhost")
    assert any(re.search(rf"mlflow server\b.*--port {uri.port}\b", c) for c in raw["head_start_ray_commands"]), (
        f"head_start_ray_commands start no MLflow server on port {uri.port} (tracking.uri {study.tracking.uri})"
    )
