"""fracture.model.checkpoint: save -> load_model rebuilds the same model, and the files are what they claim."""

import json
import shutil

import pytest
import torch

from fracture.core.config import Config, OptimConfig
from fracture.model import checkpoint, network
from fracture.model.engine import build_optimizer, build_scheduler
from fracture.model.network import FractureNet

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking checkpoint of a non-default model, and the input/output it must reproduce."""
    torch.manual_seed(0)
    raw = Config().to_dict()
    raw["model"]["dropout"] = 0.3
    raw["model"]["hidden"] = 32
    cfg = Config.from_dict(raw)
    net = FractureNet(hidden=cfg.model.hidden, dropout=cfg.model.dropout, l2=cfg.model.l2)
    with torch.no_grad():  # move the head away from any fresh init
        net.fc2.bias.fill_(0.25)
    optimizer = build_optimizer(net, OptimConfig(schedule="cosine"))
    scheduler = build_scheduler(optimizer, OptimConfig(schedule="cosine"), epochs=3)
    x = torch.rand(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        expected = net(x)
    state = {
        "epoch": 3,
        "config": cfg.to_dict(),
        "threshold": 0.4321,
        "val_auc": 0.75,
        "weights": "none",
        "history": [{"epoch": 1, "val_auc": 0.5}],
    }
    directory = checkpoint.save(tmp_path_factory.mktemp("ckpt") / "epoch_3", net, optimizer, state, scheduler)
    return directory, cfg, state, x, expected


@pytest.fixture(scope="module")
def loaded(saved):
    return checkpoint.load_model(saved[0])  # each FractureNet build costs about a second


def test_save_writes_the_three_files(saved):
    directory = saved[0]
    assert {p.name for p in directory.iterdir()} == {
        checkpoint.MODEL_FILE,
        checkpoint.OPTIMIZER_FILE,
        checkpoint.STATE_FILE,
    }
    json.loads((directory / checkpoint.STATE_FILE).read_text())


def test_load_model_reproduces_predictions(saved, loaded):
    _, _, _, x, expected = saved
    net, _ = loaded
    assert not net.training
    with torch.no_grad():
        got = net(x)
    assert torch.equal(got, expected)


def test_load_model_honours_the_saved_config(saved, loaded):
    cfg = saved[1]
    net, state = loaded
    assert net.dropout.p == pytest.approx(0.3)
    assert net.fc1.out_features == 32
    assert Config.from_dict(state["config"]) == cfg


def test_load_model_never_fetches_the_backbone_weights_it_replaces(saved, tmp_path, monkeypatch):
    directory, cfg, state, x, expected = saved

    def fetch(net, weights):
        raise AssertionError(f"load_model fetched {weights}, which model.pt replaces anyway")

    monkeypatch.setattr(network, "_load_pretrained", fetch)
    trained_from_imagenet = {**state, "config": cfg.replace(model={"weights": "imagenet"}).to_dict()}
    shutil.copy(directory / checkpoint.MODEL_FILE, tmp_path)
    (tmp_path / checkpoint.STATE_FILE).write_text(json.dumps(trained_from_imagenet))
    net, _ = checkpoint.load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(net(x), expected)


def test_state_round_trips(saved, loaded):
    directory, _, state, _, _ = saved
    loaded_state = loaded[1]
    assert loaded_state == state
    assert loaded_state["threshold"] == 0.4321 and loaded_state["epoch"] == 3
    assert checkpoint.read_state(directory) == state


def test_model_file_loads_with_weights_only(saved):
    directory = saved[0]
    sd = torch.load(directory / checkpoint.MODEL_FILE, map_location="cpu", weights_only=True)
    assert "features.0.weight" in sd and "fc1.weight" in sd and "fc2.bias" in sd
    opt = torch.load(directory / checkpoint.OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    assert set(opt) == {"optimizer", "scheduler"} and opt["scheduler"] is not None


def test_save_without_optimizer_writes_no_optimizer_file(tmp_path):
    torch.manual_seed(0)
    net = FractureNet(hidden=8)
    checkpoint.save(tmp_path, net, None, {"epoch": 0, "config": Config().to_dict()})
    assert not (tmp_path / checkpoint.OPTIMIZER_FILE).exists()
    assert (tmp_path / checkpoint.MODEL_FILE).is_file()


def test_read_state_without_state_json_raises(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path)) as info:
        checkpoint.read_state(tmp_path)
    assert "state.json" in str(info.value)


def test_the_train_order_each_epoch_saw_is_kept_and_restored(tmp_path):
    import numpy as np
    import ray.train

    net = FractureNet(hidden=8)
    orders = [np.array([3, 0, 2, 1]), np.array([1, 3, 0, 2]), np.array([2, 0])]  # ragged: a short shard is fine
    directory = checkpoint.save(
        tmp_path / "c", net, None, {"epoch": 2, "config": Config().to_dict()}, train_order=orders
    )
    back = checkpoint.read_train_order(directory)
    assert len(back) == 3 and all(np.array_equal(a, b) for a, b in zip(back, orders, strict=True))
    state = checkpoint.restore(ray.train.Checkpoint.from_directory(str(directory)), FractureNet(hidden=8), None)
    assert [r.tolist() for r in state["train_order"]] == [r.tolist() for r in orders]
    assert checkpoint.read_train_order(checkpoint.save(tmp_path / "old", net, None, {"epoch": 0})) == []


class _Boom:
    """A pickle that would run code when loaded: what weights_only=True exists to refuse."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('pickled code ran')",))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda path: torch.save(_Boom(), path), id="pickled code"),
        pytest.param(lambda path: path.write_bytes(b"not a torch file at all"), id="garbage"),
        pytest.param(lambda path: torch.save({"wrong.weight": torch.zeros(2)}, path), id="another model"),
    ],
)
def test_a_model_file_that_is_not_ours_is_one_clear_error(tmp_path, content):
    checkpoint.save(tmp_path, FractureNet(hidden=8), None, {"epoch": 0, "config": Config().to_dict()})
    content(tmp_path / checkpoint.MODEL_FILE)
    with pytest.raises(checkpoint.CheckpointError, match="model.pt: not loadable") as info:
        checkpoint.load_model(tmp_path)
    assert "\n" not in str(info.value)


def test_evaluate_job_on_a_crafted_model_file_prints_one_error_line(tmp_path, run_job):
    checkpoint.save(tmp_path, FractureNet(hidden=8), None, {"epoch": 0, "config": Config().to_dict()})
    torch.save(_Boom(), tmp_path / checkpoint.MODEL_FILE)
    proc = run_job("evaluate.py", "--model", str(tmp_path), f"cluster.storage_path={tmp_path / 'runs'}", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.pt" in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "pickled code ran" not in proc.stderr + proc.stdout


def test_a_weight_average_is_what_loads_and_training_resumes_from_the_raw_weights(tmp_path):
    import ray.train

    from fracture.model.engine import weight_average

    torch.manual_seed(0)
    net = FractureNet(hidden=8)
    average = weight_average(net, 0.9, torch.device("cpu"))
    with torch.no_grad():
        net.fc2.bias.fill_(1.0)
        average.update_parameters(net)
        net.fc2.bias.fill_(3.0)  # raw weights moved on; the average holds 1.0
    state = {"epoch": 0, "config": Config().replace(model={"hidden": 8}).to_dict()}
    directory = checkpoint.save(tmp_path / "c", average.module, None, state, train_net=net)

    loaded, _ = checkpoint.load_model(directory)
    assert loaded.fc2.bias.item() == pytest.approx(1.0)  # scoring and registering use the average
    net2 = FractureNet(hidden=8)
    average2 = weight_average(net2, 0.9, torch.device("cpu"))
    checkpoint.restore(ray.train.Checkpoint.from_directory(str(directory)), net2, None, average=average2)
    assert net2.fc2.bias.item() == pytest.approx(3.0)
    assert average2.module.fc2.bias.item() == pytest.approx(1.0)
    with torch.no_grad():
        net2.fc2.bias.fill_(2.0)
        average2.update_parameters(net2)  # it goes on averaging, not restarting from the raw weights
    assert average2.module.fc2.bias.item() == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
