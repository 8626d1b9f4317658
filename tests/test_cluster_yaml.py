"""cluster.yaml (the `ray up` config), deploy/ (image, IAM policies, checklist) and
jobs/studies/gpu_cluster.yaml, checked offline.

Schema checks use Ray's own `prepare_config` + `validate_config` (ray.autoscaler._private.util):
the two calls `ray up` makes before it talks to AWS (commands._bootstrap_config). They merge the
AWS defaults, validate against the ray-schema.json shipped in the Ray package (jsonschema), then
run Ray's cross-field checks. The shell checks that cluster.yaml runs on each host (placeholders,
NVIDIA driver) run here in bash, with a fake nvidia-smi. No network and no cloud credentials are
needed; nothing here proves that AWS accepts the policies (deploy/aws.md says what is unverified).
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME

from fracture.core import config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
STUDY = ROOT / "jobs" / "studies" / "gpu_cluster.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IAM = ROOT / "deploy" / "iam"
CHECKLIST = ROOT / "deploy" / "aws.md"
ECR_IMAGE = re.compile(r"(?:REPLACE_ME_ACCOUNT|\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([\w./-]+):([\w.-]+)")
# NVIDIA's minimum Linux driver for each CUDA major version (CUDA's minor-version compatibility).
MIN_DRIVER = {12: 525, 13: 580}
EC2_WRITES = {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"}

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


def _container_env(raw: dict, *, head: bool) -> dict[str, str]:
    """`-e` / `--env` of the node's container: every process in it inherits them."""
    docker = raw["docker"]
    options = docker.get("run_options", []) + docker.get("head_run_options" if head else "worker_run_options", [])
    tokens = [t for opt in options for t in shlex.split(opt)]
    return dict(v.split("=", 1) for flag, v in itertools.pairwise(tokens) if flag in ("-e", "--env"))


def _start_env(raw: dict, key: str) -> dict[str, str]:
    """The environment `ray start` runs with: the container's, plus VAR=value words before it."""
    (start,) = [c for c in raw[key] if "ray start" in c]
    simple_command = re.split(r"[;&|]", start.split("ray start", 1)[0])[-1]
    return {**_container_env(raw, head=key.startswith("head")), **dict(re.findall(r"(\w+)=(\S+)", simple_command))}


def _repo_mounts(raw: dict) -> dict[str, Path]:
    return {r.rstrip("/"): ROOT / loc for r, loc in raw["file_mounts"].items() if not loc.startswith(("~", "/"))}


def _init_command(raw: dict, marker: str) -> str:
    (cmd,) = [c for c in raw["initialization_commands"] if marker in c]
    return cmd


def _bash(script: str, **env: str) -> subprocess.CompletedProcess:
    if not shutil.which("bash"):
        pytest.skip("needs bash")
    return subprocess.run(["bash", "-c", script], env={**os.environ, **env}, capture_output=True, text=True, timeout=30)


def _statements(name: str) -> list[dict]:
    doc = json.loads((IAM / f"{name}.json").read_text())
    assert doc["Version"] == "2012-10-17", f"{name}.json: IAM policy language version 2012-10-17"
    return doc["Statement"]


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


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
    assert _repo_mounts(raw), "the project must be mounted on the nodes"
    for remote in raw["file_mounts"]:
        assert remote.startswith("/"), f"file_mounts remote {remote!r} must be absolute"
    for remote, local in _repo_mounts(raw).items():
        assert local.exists(), f"file_mounts {remote!r}: local {local} is not in the repo"


def test_commands_reference_mounted_and_existing_paths(raw):
    mounts = _repo_mounts(raw)
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


def test_head_schedules_nothing_and_workers_have_gpus(raw):
    head, workers = _head_and_workers(raw)
    # CPU: 0 too: Ray Data's tasks then run on the GPU nodes, and their blocks stay next to the
    # trials instead of in the head's object store (cluster.yaml, available_node_types.head).
    assert head["resources"] == {"CPU": 0, "GPU": 0}, "the head must advertise no CPU and no GPU"
    assert INSTANCES[head["node_config"]["InstanceType"]][1] == 0, "head instance type has a GPU"
    (start,) = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    assert "--num-cpus=0" in start and "--num-gpus=0" in start, "the head's `ray start` must match its resources"
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


@pytest.mark.parametrize("num_workers", [1, 2, 4])
def test_a_node_type_holds_a_whole_trial(raw, study, num_workers):
    # DDP ranks of one trial on one node: across 1-GPU nodes its all-reduce crosses the network.
    _, workers = _head_and_workers(raw)
    cpus = num_workers * study.cluster.cpus_per_worker
    assert any(
        t["resources"].get("GPU", 0) >= num_workers and t["resources"]["CPU"] >= cpus for t in workers.values()
    ), f"no node type holds a trial of {num_workers} workers x ({study.cluster.cpus_per_worker} CPU + 1 GPU)"


def test_every_node_runs_one_pinned_ami(raw):
    amis = {t["node_config"]["ImageId"] for t in raw["available_node_types"].values()}
    assert len(amis) == 1, f"node types run different AMIs {amis}: one driver for every node"
    (ami,) = amis
    assert re.fullmatch(r"ami-(?:REPLACE_ME|[0-9a-f]{8}|[0-9a-f]{17})", ami), (
        f"ImageId {ami}: pin one AMI id (deploy/aws.md), not resolve:ssm:.../latest or latest_dlami"
    )


# ---------------------------------------------------------------- the image


def test_image_is_the_ray_gpu_image_of_the_project_ray():
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, re.M)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-gpu", base)
    assert match, f"deploy/Dockerfile FROM {base}: pin rayproject/ray:<version>-py3XX-gpu, not a floating tag"
    version, minor = match.groups()
    assert version == importlib.metadata.version("ray"), "the cluster's Ray must be the client's (`ray up`, jobs)"
    assert int(minor) == sys.version_info.minor, "the image's Python must be the project venv's"
    assert f"ray.__version__ == '{version}'" in text, "the build-time check must expect the FROM tag's Ray"


def test_image_bakes_what_node_setup_no_longer_installs(raw):
    text = DOCKERFILE.read_text()
    assert re.search(r"pip install [^\n]*\[aws\]", text), "the head's autoscaler needs boto3 (the aws extra)"
    # BuildKit sends only what Dockerfile.dockerignore lets through: every COPY source must pass.
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        sources = [t for t in shlex.split(line) if not t.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"deploy/Dockerfile copies {src}, which is not in the repo"
            assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, (
                f"deploy/Dockerfile.dockerignore leaves {src} out of the build context"
            )
    # A node's set-up links the synced source only; a dependency install would bypass the image.
    for cmd in _commands(raw):
        for pip in re.findall(r"pip install\b[^;&|]*", cmd):
            assert "--no-deps" in pip, f"`{pip.strip()}`: the image has the dependencies, install with --no-deps"


def test_nodes_pull_the_ecr_image_they_log_in_to(raw):
    docker = raw["docker"]
    image = docker["image"]
    match = ECR_IMAGE.fullmatch(image)
    assert match, f"docker.image {image}: the ECR image built from deploy/Dockerfile"
    region, repository, _ = match.groups()
    assert region == raw["provider"]["region"]
    assert not {"head_image", "worker_image"} & set(docker), "one image for every node"
    assert docker.get("container_name") and docker.get("pull_before_run") is True
    login = _init_command(raw, "docker login")
    assert login.startswith(f"IMAGE={image};"), "IMAGE in initialization_commands must equal docker.image"
    assert f"ecr get-login-password --region {region}" in login
    for name in ("head-policy", "worker-policy"):
        pulls = [s for s in _statements(name) if "ecr:BatchGetImage" in _listed(s["Action"])]
        assert [r for s in pulls for r in _listed(s["Resource"])] == [f"arn:aws:ecr:{region}:*:repository/{repository}"]


@pytest.mark.parametrize("var", ["IMAGE", "EFS_HOST"])
def test_a_placeholder_left_in_stops_the_setup_with_one_line(raw, var):
    cmd = _init_command(raw, f"{var}=")
    check, _, rest = cmd.partition("esac;")
    assert rest, f"the {var} command must check its placeholder first"
    result = _bash(check + "esac")
    if "REPLACE_ME" in cmd.split(";", 1)[0]:
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1 and "deploy/aws.md" in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr


def _torch_pin_and_cuda() -> tuple[str, int | None]:
    pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    spec = importlib.util.find_spec("torch")  # torch/version.py, without importing torch
    text = (Path(spec.submodule_search_locations[0]) / "version.py").read_text() if spec else ""
    version = re.search(r"__version__ = '([^'+]+)", text)
    cuda = re.search(r"cuda: Optional\[str\] = '(\d+)\.", text)
    return pin, int(cuda.group(1)) if cuda and version and version.group(1) == pin else None


def test_driver_floor_is_the_one_the_pinned_torch_needs(raw):
    cmd = _init_command(raw, "nvidia-smi")
    pin, cuda = _torch_pin_and_cuda()
    assert f"torch {pin}" in cmd, f"the driver check must name the pinned torch {pin}"
    if cuda is None:
        pytest.skip(f"the installed torch is not the CUDA build of {pin}: its CUDA version is unknown here")
    floor = int(re.search(r"-ge (\d+)", cmd).group(1))
    assert floor == MIN_DRIVER[cuda] and f"CUDA {cuda})" in cmd, f"torch {pin} is built for CUDA {cuda}"


@pytest.mark.parametrize("reported", ["580.65.06", "595.10", "575.57.08", "535.247.01", None])
def test_gpu_host_with_an_old_driver_stops_with_one_line(raw, tmp_path, reported):
    cmd = _init_command(raw, "nvidia-smi")
    gpu_probe = "grep -qs 0x10de /sys/bus/pci/devices/*/vendor"  # NVIDIA's PCI vendor id
    assert cmd.startswith(f"if {gpu_probe}; then"), "the check must run on GPU hosts only (the head has none)"
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\n" + (f"echo {reported}\n" if reported else "exit 9\n"))
    fake.chmod(0o755)
    floor = int(re.search(r"-ge (\d+)", cmd).group(1))
    result = _bash(cmd.replace(gpu_probe, "true"), PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    if reported and int(reported.split(".")[0]) >= floor:
        assert result.returncode == 0 and not result.stderr, result.stderr
    else:
        assert result.returncode != 0
        (line,) = result.stderr.strip().splitlines()
        assert f"NVIDIA driver {reported or 'missing'} < {floor}" in line and "deploy/aws.md" in line


# ---------------------------------------------------------------- who can reach what


def test_token_auth_on_every_node_from_a_file_outside_the_repo(raw):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        env = _start_env(raw, key)
        assert env.get("RAY_AUTH_MODE") == "token", f"{key}: `ray start` without RAY_AUTH_MODE=token"
        token = PurePosixPath(env["RAY_AUTH_TOKEN_PATH"])
        sources = [local for remote, local in raw["file_mounts"].items() if token.is_relative_to(remote)]
        assert sources, f"RAY_AUTH_TOKEN_PATH {token} is not under a file_mounts path"
        # Outside the repo, neither git nor `ray job submit --working-dir .` can carry the token.
        local = Path(sources[0]).expanduser()
        assert local.is_absolute() and not local.resolve().is_relative_to(ROOT), f"token source {local} in the repo"
    assert "RAY_AUTH_MODE=disabled" not in CLUSTER_YAML.read_text()


def test_gitignore_keeps_a_stray_token_out(raw):
    if not shutil.which("git"):
        pytest.skip("needs git")
    name = PurePosixPath(_container_env(raw, head=True)["RAY_AUTH_TOKEN_PATH"]).name
    for path in (name, f"deploy/{name}", f"jobs/studies/{name}"):
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, timeout=30)
        assert ignored.returncode == 0, f".gitignore lets {path} (a copied auth token) into git"


def test_servers_listen_where_only_tunnels_or_the_token_let_in(raw):
    (mlflow,) = [c for c in raw["head_start_ray_commands"] if "mlflow server" in c]
    assert re.search(r"--host[ =]127\.0\.0\.1\b", mlflow), "MLflow has no auth: loopback only (ray attach -p 5000)"
    (start,) = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    host = re.search(r"--dashboard-host[ =](\S+)", start)
    assert host, "set --dashboard-host explicitly"
    if host.group(1) != "127.0.0.1":
        assert _start_env(raw, "head_start_ray_commands").get("RAY_AUTH_MODE") == "token"


def test_docs_reach_the_head_through_tunnels_only():
    # Ray's security group opens only port 22 from outside: http://<head>:8265 times out.
    for path in (ROOT / "README.md", CHECKLIST, CLUSTER_YAML):
        for host, port in re.findall(r"https?://([^/:\s`'\"]+):(8265|5000)\b", path.read_text()):
            assert host in ("127.0.0.1", "localhost"), f"{path.name}: http://{host}:{port}; use the tunnel"


def test_job_stop_is_a_clean_sigint_with_time_to_save(raw):
    env = _start_env(raw, "head_start_ray_commands")  # the JobSupervisor reads them from its env
    assert env.get("RAY_JOB_STOP_SIGNAL") == "SIGINT", "`ray job stop` must stop a study as Ctrl-C does"
    assert int(env.get("RAY_JOB_STOP_WAIT_TIME_S", 3)) >= 60, "a study needs time to save its state to S3"


# ---------------------------------------------------------------- IAM (deploy/iam)


def test_iam_documents_parse_and_only_ec2_assumes_the_roles():
    for name in ("head-policy", "worker-policy"):
        assert all(s["Effect"] == "Allow" for s in _statements(name))
    assert _statements("ec2-trust") == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]


def test_worker_role_reads_the_bucket_and_pulls_the_image_only():
    # Trial code runs with this role: no EC2, no IAM, nothing account-wide.
    for statement in _statements("worker-policy"):
        for action in _listed(statement["Action"]):
            assert action.split(":")[0] in ("s3", "ecr") and "*" not in action, f"worker policy grants {action}"


@pytest.mark.parametrize("name", ["head-policy", "worker-policy"])
def test_s3_access_is_the_study_prefix_of_one_bucket(study, name):
    resources = [
        r
        for s in _statements(name)
        if any(a.startswith("s3:") for a in _listed(s["Action"]))
        for r in _listed(s["Resource"])
    ]
    paths = [r.removeprefix("arn:aws:s3:::") for r in resources]
    assert all(r.startswith("arn:aws:s3:::") for r in resources), f"{name}: S3 on {resources}"
    (bucket,) = {p.split("/")[0] for p in paths}
    assert "*" not in bucket, f"{name}: S3 on every bucket"
    objects = [p for p in paths if "/" in p]
    assert objects and all(p.split("/", 1)[1] not in ("", "*") for p in objects), f"{name}: a whole bucket"
    # The study writes under <bucket>/<prefix of cluster.storage_path>; the policy must allow that.
    key = f"{urlparse(study.cluster.storage_path).path.strip('/')}/{study.name}/tune/experiment_state.json"
    assert any(fnmatch.fnmatchcase(f"{bucket}/{key}", p) for p in objects), f"{name}: no access to {key}"


def test_head_passes_the_worker_role_and_no_other(raw):
    _, workers = _head_and_workers(raw)
    profiles = {t["node_config"]["IamInstanceProfile"]["Name"] for t in workers.values()}
    iam = [s for s in _statements("head-policy") if any(a.startswith("iam:") for a in _listed(s["Action"]))]
    assert len(iam) == 1 and _listed(iam[0]["Action"]) == ["iam:PassRole"], "the head's only IAM right is PassRole"
    # deploy/aws.md names each role after its instance profile.
    assert {r.rsplit("/", 1)[1] for r in _listed(iam[0]["Resource"])} == profiles
    assert iam[0]["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def test_head_changes_only_this_clusters_instances(raw):
    _, workers = _head_and_workers(raw)
    instance_types = {t["node_config"]["InstanceType"] for t in workers.values()}
    launches = 0
    for statement in _statements("head-policy"):
        actions = set(_listed(statement["Action"]))
        resources = _listed(statement["Resource"])
        writes = {a for a in actions if a.startswith("ec2:") and not a.startswith("ec2:Describe")}
        assert writes <= EC2_WRITES, f"head policy grants {writes - EC2_WRITES}"
        if not writes:
            continue
        assert "*" not in resources, f"{sorted(writes)} on every resource"
        if not any(":instance/" in r for r in resources):
            continue  # the subnet, volume, image... that a launch uses
        condition = statement.get("Condition", {}).get("StringEquals", {})
        if condition.get("ec2:CreateAction") == "RunInstances":
            assert actions == {"ec2:CreateTags"}, "tags at launch only"
            continue
        # Ray tags every instance of a cluster with ray-cluster-name (ray.autoscaler.tags).
        tag = condition.get(f"aws:RequestTag/{TAG_RAY_CLUSTER_NAME}") or condition.get(
            f"ec2:ResourceTag/{TAG_RAY_CLUSTER_NAME}"
        )
        assert tag == raw["cluster_name"], f"{sorted(writes)} on instances of any cluster"
        if "ec2:RunInstances" in actions:
            launches += 1
            allowed = set(_listed(condition.get("ec2:InstanceType", "*")))
            assert instance_types <= allowed and "*" not in str(allowed), f"launches limited to {instance_types}"
    assert launches == 1, "one RunInstances statement for instances"


def test_checklist_creates_the_profiles_cluster_yaml_names(raw):
    loop = re.search(r"for role in ([\w -]+); do", CHECKLIST.read_text())
    assert loop, "deploy/aws.md: the `for role in ...` loop that creates the roles and profiles"
    created = set(loop.group(1).split())
    named = {t["node_config"]["IamInstanceProfile"]["Name"] for t in raw["available_node_types"].values()}
    # A head without a profile would get Ray's ray-autoscaler-v1 (EC2 and S3 full access).
    assert named == created, f"cluster.yaml names profiles {named}, deploy/aws.md creates {created}"
    for role in created:
        assert (IAM / f"{role.split('-', 1)[1]}-policy.json").is_file(), f"no policy file for {role}"


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
