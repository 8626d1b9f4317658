"""python benchmarks/tune_overhead.py [--n 4] [--runners in_trial,trainer,ddp] [--reports 3] [--sleep 0.2] [--profile] [--ray-worker-niceness 0]

Seconds of overhead per Ray Tune trial, each as (Tune wall - the same work in a plain loop) / N:

* trivial: N trials of a function that sleeps --sleep s and reports, --reports times, run by
  ray.tune.Tuner one at a time (max_concurrent_trials=1), vs the same sleeps in a loop. This is
  Tune's own cost per trial: scheduling, a trial actor, result and experiment-state bookkeeping.
* the project's studies: N trials of fracture.tune.search.build_tuner(cfg, datasets, pos_weight) on a
  tiny study (32 px, 1 epoch, synthetic n=60, no search space, so every trial is the same config),
  vs the same N single-epoch trainings (build model, train one epoch, evaluate val) with the plain
  engine loop over the decoded arrays in memory, run half before and half after the studies, so a
  change in the machine's load hits both sides. The decoded cache is built before any timing.
  One study per --runners entry:
    in_trial  one worker, trained in the Tune trial's own process (cluster.runner=auto, the default)
    trainer   one worker through a TorchTrainer (cluster.runner=trainer: the path before issue 23)
    ddp       two DDP workers of half the CPUs each through a TorchTrainer (cluster.num_workers=2)

Each study's rows split its per-trial overhead: once per study (build_tuner: the datasets from the
cache), inside a trial (Tune's time_total_s minus the loop's epoch_s: start-up to the first batch
and the checkpoint + report), and between trials (the rest of the wall time: Tune ending one trial
and starting the next). --profile adds two bare TorchTrainer.fit() runs whose worker only reports
once, without and with the study's datasets (iterated once): Ray Train's fixed cost.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
import time

import _common
import ray
import ray.train
import ray.tune
import torch

from fracture.data import pipeline, synthetic
from fracture.model import checkpoint, engine
from fracture.model.network import build_model
from fracture.train import reference
from fracture.tune import search


def trivial(config: dict) -> None:
    for step in range(config["reports"]):
        time.sleep(config["sleep"])
        ray.tune.report({"step": step})


@contextlib.contextmanager
def captured(path):
    """Tune's progress tables go to a log file (printed only if the study fails)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        print(buffer.getvalue())
        raise
    finally:
        path.write_text(buffer.getvalue())


def noop_worker(config: dict) -> None:
    ray.train.report({"done": 1})


def iterate_worker(config: dict) -> None:
    """Iterate this worker's shards once, as the real worker does (fracture.train.worker.batches)."""
    from fracture.core.config import Config
    from fracture.train.session import TrainSession
    from fracture.train.worker import batches

    cfg = Config.from_dict(config["config"])
    session = TrainSession()
    for split in ("train", "val"):
        for _ in batches(session, cfg, split, 0):
            pass
    ray.train.report({"done": 1})


def bare_fit(cfg, fn, datasets: dict | None, storage) -> float:
    """Seconds of one TorchTrainer.fit() of `fn` with the study's scaling (one worker, its CPUs)."""
    from fracture.train import trainer

    tick = time.perf_counter()
    trainer.build_trainer(cfg, datasets, 1.0, fn.__name__, storage_path=str(storage), train_fn=fn).fit()
    return time.perf_counter() - tick


def plain_trainings(cfg, arrays: dict, pos_weight: float, count: int) -> tuple[float, float]:
    """`count` single-epoch trainings as a trial does them, minus Ray: (seconds, of which checkpoint saves)."""
    ckpt_s, start = 0.0, time.perf_counter()
    device = torch.device("cuda" if cfg.cluster.use_gpu else "cpu")
    for _ in range(count):
        torch.manual_seed(cfg.seed)
        net, _ = build_model(cfg.model)
        net.to(device)
        net.set_trainable_blocks(cfg.model.trainable_blocks)
        optimizer = engine.build_optimizer(net, cfg.optim)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))
        train = _common.loader(*arrays["train"], cfg.train.batch_size_per_worker, train=True, augment=cfg.data.augment)
        val = _common.loader(*arrays["val"], cfg.train.batch_size_per_worker, train=False)
        for epoch in range(cfg.train.epochs):
            engine.train_one_epoch(
                net,
                optimizer,
                train,
                loss_fn=loss_fn,
                penalty=net.l2_penalty,
                device=device,
                precision=cfg.train.precision,
            )
            engine.evaluate(net, val, device=device, threshold=cfg.train.threshold)
            with tempfile.TemporaryDirectory() as tmp:
                tick = time.perf_counter()
                checkpoint.save(tmp, net, optimizer, {"epoch": epoch, "config": cfg.to_dict()})
                ckpt_s += time.perf_counter() - tick
    return time.perf_counter() - start - ckpt_s, ckpt_s


RUNNERS = {  # name: (label, cluster settings)
    "in_trial": ("one worker in the trial's process", {"runner": "auto"}),
    "trainer": ("one worker, TorchTrainer", {"runner": "trainer"}),
    "ddp": ("two DDP workers, TorchTrainer", {"num_workers": 2}),
}


def run_study(cfg, pos_weight: float, log) -> dict[str, float]:
    """Wall times of the study of `cfg` (N identical one-epoch trials): whole, build_tuner, in trials, in epochs."""
    tick = time.perf_counter()
    with captured(log):
        tuner = search.build_tuner(cfg, pipeline.build_datasets(cfg), pos_weight)
        build_s = time.perf_counter() - tick
        results = tuner.fit()
    study_s = time.perf_counter() - tick
    if results.errors:
        raise RuntimeError(f"{cfg.name}: {len(results.errors)} trials failed; first: {results.errors[0]}")
    return {
        "study": study_s,
        "build": build_s,
        "trials": sum(r.metrics["time_total_s"] for r in results),
        "epochs": sum(r.metrics["epoch_s"] for r in results),
        "load": _common.load(),
    }


def study_rows(label: str, t: dict, n: int, plain_s: float) -> list[list]:
    """A study's rows: its overhead per trial against the plain loop, and where the time went."""
    between = t["study"] - t["build"] - t["trials"]
    return [
        [f"{label}: build_tuner(cfg).fit()", n, t["study"], t["study"] / n, (t["study"] - plain_s) / n, t["load"]],
        ["  once per study: build_tuner (datasets from the cache)", 1, t["build"], t["build"] / n, "-", "-"],
        ["  in trials: the loop's epoch_s (train + eval)", n, t["epochs"], t["epochs"] / n, "-", "-"],
        [
            "  in trials: start-up, first batch, checkpoint, report",
            n,
            t["trials"] - t["epochs"],
            (t["trials"] - t["epochs"]) / n,
            "-",
            "-",
        ],  # fmt: skip
        ["  between trials: Tune ends one, starts the next", n, between, between / n, "-", "-"],
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4, help="trials in each study")
    p.add_argument("--runners", default="in_trial,trainer,ddp", help=f"studies to run, of {', '.join(RUNNERS)}")
    p.add_argument("--reports", type=int, default=3, help="reports per trivial trial")
    p.add_argument("--sleep", type=float, default=0.2, help="seconds of work before each trivial report")
    p.add_argument("--profile", action="store_true", help="also time bare TorchTrainer.fit() runs (~1 min more)")
    p.add_argument("--gpu", action="store_true", help="trials (and the plain loop) train on one GPU each")
    _common.add_niceness_arg(p)
    args = p.parse_args()
    _common.quiet()
    n = args.n
    runners = [r for r in args.runners.split(",") if r]
    unknown = set(runners) - set(RUNNERS)
    if unknown:
        p.error(f"--runners: unknown {', '.join(sorted(unknown))}")

    tmp = _common.workdir()
    try:
        print(f"machine: {_common.machine()}; load {_common.load()} at start")
        root = synthetic.generate(tmp / "data", n=60, seed=0)
        cpus = os.cpu_count()
        cfg = _common.make_config(
            tmp,
            root,
            "data.image_size=32",
            "train.epochs=1",
            "train.batch_size_per_worker=16",
            "train.patience=0",
            "cluster.num_workers=1",
            f"cluster.cpus_per_worker={cpus}",
            f"search.num_trials={n}",
            "search.max_concurrent=1",
            *(["cluster.use_gpu=true", f"cluster.cpus_per_worker={min(cpus, 4)}"] if args.gpu else []),
        )
        tick = time.perf_counter()
        _common.init_ray(cpus + 2, args.ray_worker_niceness)  # as cluster.init_ray: trial CPUs + 2 for Ray Data
        init_s = time.perf_counter() - tick
        rows = [["ray.init", "-", init_s, "-", "-", _common.load()]]

        # --- trivial trials
        work = args.reports * args.sleep
        tick = time.perf_counter()
        for _ in range(n):
            for _ in range(args.reports):
                time.sleep(args.sleep)
        loop_s = time.perf_counter() - tick
        tuner = ray.tune.Tuner(
            trivial,
            param_space={"reports": args.reports, "sleep": args.sleep},
            tune_config=ray.tune.TuneConfig(num_samples=n, max_concurrent_trials=1),
            run_config=ray.tune.RunConfig(name="trivial", storage_path=str(tmp / "tune"), verbose=0),
        )
        tick = time.perf_counter()
        with captured(tmp / "trivial.log"):
            results = tuner.fit()
        tune_s = time.perf_counter() - tick
        assert not results.errors, results.errors
        rows.append([f"trivial: loop ({work:.1f} s of work each)", n, loop_s, loop_s / n, "-", _common.load()])
        rows.append(["trivial: Tuner, 1 at a time", n, tune_s, tune_s / n, (tune_s - loop_s) / n, _common.load()])

        # --- the project's studies, between two halves of the plain loop
        pos_weight = pipeline.pos_weight(cfg)
        arrays = {split: reference.split_arrays(cfg, split) for split in ("train", "val")}  # builds the cache
        first = n // 2
        plain_s, ckpt_s = plain_trainings(cfg, arrays, pos_weight, first)
        timed = {}
        for name in runners:
            label, settings = RUNNERS[name]
            if name == "ddp" and not args.gpu:
                settings = settings | {"cpus_per_worker": max(1, cpus // 2)}
            run_cfg = cfg.replace(
                name=f"bench_{name}",
                cluster=settings,
                # the first config's manifest and decoded cache: no study decodes inside its timing
                data={"manifest": str(pipeline.manifest_path(cfg)), "cache_dir": str(pipeline.cache_dir(cfg))},
            )
            timed[label] = run_study(run_cfg, pos_weight, tmp / f"{name}.log")
        more_plain, more_ckpt = plain_trainings(cfg, arrays, pos_weight, n - first)
        plain_s, ckpt_s = plain_s + more_plain, ckpt_s + more_ckpt
        shape = f"{len(arrays['train'][0])} train / {len(arrays['val'][0])} val images, 32 px"
        rows.append([f"plain engine loop ({shape})", n, plain_s, plain_s / n, "-", _common.load()])
        rows.append(["  plain loop's checkpoint.save (not in its time)", n, ckpt_s, ckpt_s / n, "-", "-"])
        for label, t in timed.items():
            rows.extend(study_rows(label, t, n, plain_s))

        if args.profile:
            for label, fn, datasets in (
                ("no-op worker", noop_worker, None),
                ("no-op worker + datasets iterated once", iterate_worker, pipeline.build_datasets(cfg)),
            ):
                seconds = bare_fit(cfg, fn, datasets, tmp / "bare")
                rows.append([f"profile: TorchTrainer.fit, {label}", 1, seconds, seconds, "-", _common.load()])

        print(_common.table(["what", "trials", "seconds", "s / trial", "overhead s / trial", "load 1/5/15"], rows))
        summary = "; ".join(f"{label} {(t['study'] - plain_s) / n:.2f} s" for label, t in timed.items())
        print(
            f"\nper-trial overhead: trivial {(tune_s - loop_s) / n:.2f} s (Tune alone); {summary}; "
            f"on top of {plain_s / n:.2f} s of training per trial; load {_common.load()} at end"
        )
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
