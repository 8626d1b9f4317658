"""fracture.tune.console and fracture.runtime.logs: trial names, the lines a study prints, the Ray chatter dropped."""

from __future__ import annotations

import functools
import logging

import pytest
from ray.tune.experiment import Trial

from fracture.runtime import logs
from fracture.tune import console

# Lines as the 4-trial demo printed them before (worker lines without Ray's "(Actor pid=...)" prefix).
RAY_CHATTER = [
    "Starting execution of Dataset train_0357ZtGrUtR8gJ5r03j64x_0. Full logs are in /tmp/ray/session_x/logs/ray-data",
    "Execution plan of Dataset train_0357ZtGrUtR8gJ5r03j64x_0: InputDataBuffer[Input] -> TaskPoolMapOperator[Project] "
    "-> OutputSplitter[split(1, equal=True)]",
    "✔️  Dataset train_0357ZtGrUtR8gJ5r03j64x_0 execution finished in 3.46 seconds",
    "Data sink Parquet finished. 282 rows and 855.6KiB data written.",
    "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "Requesting resources: {'CPU': 2.0} * 1",
    "Attempting to start training worker group of size 1 with the following resources: [{'CPU': 2.0}] * 1",
    "Setting up process group for: env:// [rank=0, world_size=1]",
    "Started training worker group of size 1: ",
    "- (ip=192.0.2.2, pid=12076) world_rank=0, local_rank=0, node_rank=0",
    "Moving model to device: cpu",
    "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/tmp/r/train/demo-trial_77/checkpoint_1)",
    "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'val_auc': 0.83})",
    "Detected that the Ray Train controller actor (a2dc82352ed01cda06cb0b7301000000) is dead. Cleaning up placement "
    "group = [PlacementGroupID(a94c0d0e90005fe4c8af9bce93ab01000000)] created by this run.",
    "[2026-12-02 07:16:22,714 E 11925 11995] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: "
    "'3873e4a9463e6288e89c977f01000000' has constructor arguments in the object store and max_restarts > 0",
    "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "Wrote the latest version of all result files and experiment state to '/tmp/r/tune' in 0.0102s.",
    "(pid=gcs_server) [2026-12-07 12:31:12,838 E 22897 22897] (gcs_server) gcs_actor_scheduler.cc:538: Failed to kill "
    "actor a9e4a4cc15a0d51313c7ec4101000000, return status: Invalid: KillActor RPC failed for actor "
    "a9e4a4cc15a0d51313c7ec4101000000: RpcError: RPC error: Socket closed rpc_code: 14",
]
DEPRECATION = [
    "/venv/ray/data/iterator.py:577: RayDeprecationWarning: Passing a function to "
    "`iter_torch_batches(collate_fn)` is deprecated in Ray 2.47.",
    "  warnings.warn(",
]
# Ray Data's ListFiles thread when a Dataset's execution ends before it queued its end marker
SHUTDOWN_TRACEBACK = [
    "Exception in thread Thread-3 (_signal_completion):",
    "Traceback (most recent call last):",
    '  File "/usr/lib/python3.11/threading.py", line 1045, in _bootstrap_inner',
    "    self.run()",
    '  File "/venv/lib/python3.11/site-packages/ray/data/_internal/dynamic_work_queue.py", line 180, in _signal_',
    "    pool.work_queue.put(SENTINEL)",
    '  File "/venv/lib/python3.11/site-packages/ray/data/_internal/util.py", line 1082, in put',
    "    raise InterruptedError()",
    "InterruptedError",
]
ACTIONABLE = [
    "resuming from epoch 3 (best val_auc 0.8120)",
    "Task was killed due to the node running low on memory.",
    "Traceback (most recent call last):",
    '  File "/work/platform/fracture/worker.py", line 80, in train_fn_per_worker',
    "RuntimeError: DataLoader worker exited unexpectedly",
    "/work/platform/fracture/data.py:197: UserWarning: The given NumPy array is not writable",
    "  out = {IMAGE: torch.from_numpy(images)}",
]


def _trial(tag: str, trial_id: str = "4bd22202", first: int = 1, config: dict | None = None) -> Trial:
    return Trial(
        "train_driver_fn",
        config=config or {},
        trial_id=trial_id,
        experiment_tag=tag,
        stub=True,
        trial_name_creator=functools.partial(console.trial_name, first=first),
        trial_dirname_creator=functools.partial(console.trial_dirname, first=first),
    )


def test_trials_are_named_by_number_and_their_dirs_keep_the_trial_id():
    searched = _trial("3_config=model=dropout=0.3179,l2=3.9063e-05", first=1)  # a searcher counts from 1
    assert str(searched) == "trial_003" and searched._generate_dirname() == "trial_003_4bd22202"
    single = _trial("0", trial_id="8ce9f_00000", first=0)  # the default generator from 0
    assert str(single) == "trial_001" and single._generate_dirname() == "trial_001_8ce9f_00000"


def test_the_start_line_shows_only_the_searched_values():
    config = {
        "config": {
            "model": {"dropout": 0.317866, "l2": 3.90625e-05, "hidden": 128},
            "optim": {"lr_head": 0.000191822, "lr_backbone": 1.25979e-05, "name": "adam"},
        }
    }
    keys = console.short_keys(["model.dropout", "model.l2", "optim.lr_head", "optim.lr_backbone"])
    assert (
        console.searched_values(config["config"], keys) == "dropout=0.32 l2=3.9e-05 lr_head=1.9e-04 lr_backbone=1.3e-05"
    )
    assert console.short_keys(["model.lr", "optim.lr", "model.l2"]) == {
        "model.lr": "model.lr",
        "optim.lr": "optim.lr",
        "model.l2": "l2",
    }


RESULT = {
    "epoch": 0,
    "epochs_done": 1,
    "train_loss": 0.61301,
    "val_auc": 0.838776,
    "val_sensitivity": 0.9,
    "val_specificity": 0.795918,
    "train_images_per_s": 12.688,
    "epoch_s": 24.09,
    "best_val_auc": 0.838776,
    "early_stopped": False,
    "time_total_s": 80.3,
    "done": False,
}


def test_an_epoch_line_has_the_metrics_speed_and_eta():
    assert console.epoch_line("trial_001", RESULT, epochs=3) == (
        "trial_001 epoch 1/3  loss 0.6130  val AUROC 0.8388  sens 0.900 spec 0.796  12.7 img/s  24 s/epoch  ETA 48 s"
    )
    last = console.epoch_line("trial_001", RESULT | {"epochs_done": 3}, epochs=3, workers=2)
    assert "2x12.7 img/s" in last and "ETA" not in last


def test_a_restored_epoch_reported_again_says_where_the_trial_goes_on_from():
    replay = RESULT | {"epoch": 4, "epochs_done": 5, "replayed": True}
    assert console.result_line("trial_003", replay, epochs=10) == (
        "trial_003 restored its checkpoint of epoch 5/10 and trains on from there"
    )
    assert console.result_line("trial_003", RESULT, epochs=3) == console.epoch_line("trial_003", RESULT, epochs=3)


@pytest.mark.parametrize(
    "result, says",
    [
        ({"epochs_done": 3, "done": True}, "trial_002 finished 3/3 epochs: best val AUROC 0.8388, 1m20s"),
        (
            {"done": True},
            "trial_002 stopped by ASHA after 1/3 epochs: val AUROC 0.8388 was below its rung's cutoff, 1m20s",
        ),
        (
            {"epochs_done": 2, "early_stopped": True, "done": True},
            "trial_002 stopped early after 2/3 epochs: no val AUROC gain for 5 epochs (best 0.8388), 1m20s",
        ),
        ({}, "trial_002 paused after 1/3 epochs (the study was interrupted), 1m20s"),
    ],
)
def test_the_end_line_says_how_the_trial_ended(result, says):
    assert console.end_line("trial_002", RESULT | result, epochs=3, patience=5) == says


def test_lines_speak_of_the_metric_the_study_ranks_by():
    result = RESULT | {"val_spec_at_sens_lower": 0.41234, "best_val_spec_at_sens_lower": 0.45, "done": True}
    line = console.epoch_line("trial_001", result, epochs=3, ranked="val_spec_at_sens_lower")
    assert "val AUROC 0.8388" in line and "val_spec_at_sens_lower 0.4123" in line
    ended = console.end_line(
        "trial_002", result | {"epochs_done": 3}, epochs=3, patience=5, ranked="val_spec_at_sens_lower"
    )
    assert ended == "trial_002 finished 3/3 epochs: best val_spec_at_sens_lower 0.4500, 1m20s"


def test_ray_chatter_is_dropped_and_what_a_user_can_act_on_is_kept():
    assert logs.without_noise(RAY_CHATTER + DEPRECATION) == []
    assert logs.without_noise(ACTIONABLE) == ACTIONABLE
    mixed = [RAY_CHATTER[0], *DEPRECATION, ACTIONABLE[0], RAY_CHATTER[1], *ACTIONABLE[-2:]]
    assert logs.without_noise(mixed) == [ACTIONABLE[0], *ACTIONABLE[-2:]]


def test_a_ray_data_thread_interrupted_at_shutdown_is_dropped_but_not_a_real_traceback():
    assert logs.without_noise([ACTIONABLE[0], *SHUTDOWN_TRACEBACK, ACTIONABLE[1]]) == ACTIONABLE[:2]
    ours = [*SHUTDOWN_TRACEBACK[:4], '  File "/work/platform/fracture/data.py", line 9, in f', "    g()"]
    ours += SHUTDOWN_TRACEBACK[4:]  # a frame of the project's: a user may act on it
    assert logs.without_noise(ours) == ours
    crashed = [*SHUTDOWN_TRACEBACK[:-1], "RuntimeError: DataLoader worker exited unexpectedly"]
    assert logs.without_noise(crashed) == crashed


def test_quiet_ray_filters_the_console_handlers_of_rays_loggers():
    logs.quiet_ray()
    logs.quiet_ray()  # idempotent: one filter per handler
    handlers = [
        h
        for name in ("ray", "ray.data")
        for h in logging.getLogger(name).handlers
        if isinstance(h, logging.StreamHandler)
    ]
    assert handlers and all(sum(isinstance(f, logs._DropNoise) for f in h.filters) == 1 for h in handlers)

    def record(message: str) -> logging.LogRecord:
        return logging.makeLogRecord(
            {
                "name": "ray.data._internal.execution.streaming_executor",
                "msg": message,
                "levelno": logging.INFO,
                "levelname": "INFO",
            }
        )

    for handler in handlers:
        assert not handler.filter(record(RAY_CHATTER[1])) and not handler.filter(record(RAY_CHATTER[-1]))
        assert handler.filter(record("Ray Data's operators are short of memory"))
