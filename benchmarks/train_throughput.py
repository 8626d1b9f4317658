"""python benchmarks/train_throughput.py [--n 240] [--image-size 64] [--epochs 3] [--root ../shared/fracatlas] [--workers 1,2] [--log-mlflow [URI]] [--ray-worker-niceness 0]

The same epochs of VGG16 + head training, in one process run, two ways:

* plain: a plain PyTorch loop. The decoded cache's uint8 arrays in memory, a DataLoader over them
  that shuffles and augments (presets.augment) like Ray's train split, engine.train_one_epoch and
  engine.evaluate with the worker's model, optimizer, loss (pos_weight) and batch size. Its epochs
  run half before and half after the Ray Train run, so a change in the machine's load during the
  run hits both sides.
* ray: Ray Train with Ray Data, the production worker: TorchTrainer(fracture.train.worker.train_fn_per_worker)
  on data.build_datasets(cfg), DataConfig(datasets_to_split=["train"]), cluster.num_workers=1,
  cpus_per_worker=os.cpu_count() on CPU (torch threads in a Ray worker = its CPUs). Per-epoch
  figures come from result.metrics_dataframe (epoch_s, train_images, train_images_per_s, which the
  worker measures around its train loop only), plus the wall-clock time of each report call, which
  a thin wrapper around the worker adds to its metrics.

Steady state = epochs >= 1 on both sides. Three per-epoch time ratios, Ray over plain:
  train loop only; train + val evaluation (the worker's epoch_s); and the honest one, the interval
  between Ray reports (train + eval + checkpoint + report) over plain train + eval (target <= 1.10x).
The report-to-report interval holds one epoch's train + eval + local checkpoint save + the
previous report (persisting its checkpoint to storage). Start-up (fit() to the first report,
minus epoch 0) is reported separately.
On CUDA also: peak memory, MFU (VGG16 at 224 px = 15.5 GMACs = 31 GFLOPs forward, ~93 GFLOPs per
training image forward + backward, scaled by (size/224)^2) against the GPU's dense bf16 peak, and
with --workers 1,2,... the scaling efficiency of each worker count. --log-mlflow logs the figures
as one run in experiment "benchmarks" via fracture.track.study_runs.log_evaluation.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import _common
import ray.train
import ray.train.torch
import torch

from fracture.data import pipeline
from fracture.model import checkpoint, engine
from fracture.model.network import build_model
from fracture.track import store
from fracture.train import reference, trainer, worker

TRAIN_GFLOPS_224 = 93.0  # forward (15.5 GMACs = 31 GFLOPs) + backward (~2x forward), per image
DENSE_BF16_TFLOPS = [  # (pattern in torch.cuda.get_device_name(), dense bf16 peak), first match wins
    (r"H100.*PCIe", 756.0),
    (r"H100|H200", 989.0),
    (r"A100", 312.0),
    (r"A10G", 125.0),
    (r"\bL4\b", 121.0),
    (r"4090", 165.0),
]


def timed_worker(loop_config: dict) -> None:
    """The production worker, each of its reports stamped with this worker's wall clock and load
    (and peak CUDA memory). Worker-side stamps: the Train controller only sees a report when it polls
    the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s), too coarse for per-epoch times."""
    real = ray.train.report

    def report(metrics: dict, checkpoint=None, **kwargs):
        stamp = {
            "report_unix_s": time.time(),
            "report_cpu_s": time.process_time(),
            "load": "/".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        if torch.cuda.is_available():
            stamp["peak_memory_bytes"] = float(torch.cuda.max_memory_allocated())
        return real({**metrics, **stamp}, checkpoint=checkpoint, **kwargs)

    ray.train.report = report  # fracture.train.worker looks ray.train.report up at call time
    try:
        worker.train_fn_per_worker(loop_config)
    finally:
        ray.train.report = real


def gflops_per_train_image(size: int) -> float:
    return TRAIN_GFLOPS_224 * (size / 224) ** 2


def bf16_peak_tflops() -> tuple[str, float | None]:
    name = torch.cuda.get_device_name()
    return name, next((peak for pattern, peak in DENSE_BF16_TFLOPS if re.search(pattern, name)), None)


def plain_epochs(state: dict, cfg, epochs: range, rows: list, device: torch.device) -> None:
    """Run `epochs` of the plain loop, continuing state (net, optimizer, loaders); one row per epoch."""
    net, optimizer = state["net"], state["optimizer"]
    for epoch in epochs:
        tick, cpu = time.perf_counter(), time.process_time()
        out = engine.train_one_epoch(
            net,
            optimizer,
            state["train"],
            loss_fn=state["loss_fn"],
            penalty=net.l2_penalty,
            device=device,
            grad_clip=cfg.optim.grad_clip,
            precision=cfg.train.precision,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - tick
        out |= engine.evaluate(
            net,
            state["val"],
            device=device,
            threshold=cfg.train.threshold,
            target_sensitivity=cfg.train.target_sensitivity,
        )
        epoch_s, cpu_s = time.perf_counter() - tick, time.process_time() - cpu
        # What a plain loop that checkpoints would pay on top (not counted in its epoch time).
        with tempfile.TemporaryDirectory() as tmp:
            tick = time.perf_counter()
            checkpoint.save(tmp, net, optimizer, {"epoch": epoch, "config": cfg.to_dict()})
            ckpt_s = time.perf_counter() - tick
        rows.append(
            {
                "path": "plain",
                "epoch": epoch,
                "images": out["train_images"],
                "train_s": train_s,
                "eval_s": epoch_s - train_s,
                "epoch_s": epoch_s,
                "extra_s": ckpt_s,
                "wall_s": epoch_s,
                "cpu_s": cpu_s,
                "train_ips": out["train_images"] / train_s,
                "load": _common.load(),
            }
        )


def ray_train(cfg, datasets: dict, pos_weight: float, storage: Path) -> dict:
    """One TorchTrainer run; per-epoch rows plus start-up / teardown seconds."""
    fit = trainer.build_trainer(
        cfg,
        datasets,
        pos_weight,
        f"bench-{cfg.cluster.num_workers}w",
        storage_path=str(storage),
        train_fn=timed_worker,
        keep=None,  # every epoch stays in metrics_dataframe
    )
    start = time.time()
    result = fit.fit()
    end = time.time()
    frame = result.metrics_dataframe.sort_values("epoch").reset_index(drop=True)
    rows, previous, previous_cpu = [], start, float("nan")
    for _, m in frame.iterrows():
        train_s = m["train_images"] / m["train_images_per_s"]
        wall_s = m["report_unix_s"] - previous
        rows.append(
            {
                "path": f"ray ({cfg.cluster.num_workers}w)",
                "epoch": int(m["epoch"]),
                "images": m["train_images"],
                "train_s": train_s,
                "eval_s": m["epoch_s"] - train_s,
                "epoch_s": m["epoch_s"],
                "wall_s": wall_s,
                "extra_s": wall_s - m["epoch_s"],
                "train_ips": m["train_images_per_s"],
                "load": m["load"],
                "cpu_s": m["report_cpu_s"] - previous_cpu,
            }
        )
        previous, previous_cpu = m["report_unix_s"], m["report_cpu_s"]
    return {
        "rows": rows,
        "first_report_s": frame["report_unix_s"].iloc[0] - start,
        "startup_s": frame["report_unix_s"].iloc[0] - start - rows[0]["epoch_s"],
        "teardown_s": end - frame["report_unix_s"].iloc[-1],
        "peak_memory_bytes": float(frame["peak_memory_bytes"].max()) if "peak_memory_bytes" in frame else 0.0,
    }


def thread_counts(cpus: float) -> str:
    """Torch threads in this driver and in a Ray actor holding `cpus` CPUs (as a Train worker does)."""

    @ray.remote(num_cpus=cpus)
    class Probe:
        def threads(self):
            return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads(), os.nice(0)

    probe = Probe.remote()
    omp, threads, nice = ray.get(probe.threads.remote())
    ray.kill(probe)
    return (
        f"torch threads: driver {torch.get_num_threads()}, Ray actor with {cpus:g} CPUs {threads} "
        f"(OMP_NUM_THREADS={omp}); nice: driver {os.nice(0)}, Ray workers {nice}"
    )


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    cuda = _common.has_cuda()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4000 if cuda else 240, help="synthetic images (ignored with --root)")
    p.add_argument("--image-size", type=int, default=_common.default_size())
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--root", default=None, help="a FracAtlas-layout folder (e.g. ../shared/fracatlas)")
    p.add_argument(
        "--workers",
        default=",".join(str(w) for w in range(1, torch.cuda.device_count() + 1)) if cuda else "1",
        help="Ray Train worker counts to run, e.g. 1,2,4 (scaling efficiency when several)",
    )
    p.add_argument(
        "--log-mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="log the figures to MLflow (URI, else $MLFLOW_TRACKING_URI, else sqlite under runs/benchmarks)",
    )
    _common.add_niceness_arg(p)
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 0 is warm-up; steady state is epochs >= 1)")
    workers = [int(w) for w in args.workers.split(",")]
    _common.quiet()

    tmp = _common.workdir()
    try:
        device = engine.default_device()
        print(f"machine: {_common.machine()}; load {_common.load()} at start")
        root = _common.data_root(args.root, tmp, args.n)
        # GPU: leave about half the cores to Ray Data's augment tasks; CPU: the worker gets every core,
        # as the plain loop's torch does (cluster.init_ray adds 2 logical CPUs for Ray Data beside it).
        cpus = max(1, os.cpu_count() // (2 * max(workers))) if cuda else os.cpu_count()
        cfg = _common.make_config(
            tmp,
            root,
            f"data.image_size={args.image_size}",
            f"train.epochs={args.epochs}",
            f"train.batch_size_per_worker={_common.BATCH}",
            "train.patience=0",
            f"cluster.use_gpu={cuda}",
            f"cluster.cpus_per_worker={cpus}",
            f"cluster.num_workers={max(workers)}",
        )
        # As cluster.init_ray sizes a local instance: the trial's CPUs + 2 for Ray Data's tasks.
        _common.init_ray(max(round(max(workers) * cpus + 2), os.cpu_count()), args.ray_worker_niceness)
        tick = time.perf_counter()
        pos_weight = pipeline.pos_weight(cfg)
        datasets = pipeline.build_datasets(cfg)  # builds the decoded cache (both splits)
        cache_s = time.perf_counter() - tick
        train_x, train_y = reference.split_arrays(cfg, "train")
        val_x, val_y = reference.split_arrays(cfg, "val")
        print(
            f"data: {root} ({'real' if args.root else 'synthetic'}), train {len(train_x)} / val {len(val_x)} "
            f"images at {args.image_size} px, batch {_common.BATCH}; decoded cache built in {cache_s:.1f} s"
        )
        print(
            f"profile: {thread_counts(cfg.cluster.cpus_per_worker)}; ray resources {ray.cluster_resources().get('CPU'):g} CPU\n"
        )

        torch.manual_seed(cfg.seed)  # the worker seeds the same way before build_model
        if cuda:
            torch.backends.cudnn.benchmark = True  # as the worker does
        net, _ = build_model(cfg.model)
        net.set_trainable_blocks(cfg.model.trainable_blocks)
        net.to(device)
        loader_workers = min(8, os.cpu_count() // 2) if cuda else 0  # CPU: augmenting inline costs <1% of a step
        state = {
            "net": net,
            "optimizer": engine.build_optimizer(net, cfg.optim),
            "loss_fn": torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], device=device)),
            "train": _common.loader(
                train_x,
                train_y,
                _common.BATCH,
                train=True,
                augment=cfg.data.augment,
                workers=loader_workers,
                pin_memory=cuda,
            ),
            "val": _common.loader(val_x, val_y, _common.BATCH, train=False, workers=loader_workers, pin_memory=cuda),
        }
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rows: list[dict] = []
        half = math.ceil(args.epochs / 2)
        plain_epochs(state, cfg, range(half), rows, device)
        plain_peak = torch.cuda.max_memory_allocated() if cuda else 0
        runs = {}
        for w in workers:
            runs[w] = ray_train(cfg.replace(cluster={"num_workers": w}), datasets, pos_weight, tmp / "train")
            rows += runs[w]["rows"]
        plain_epochs(state, cfg, range(half, args.epochs), rows, device)

        headers = [
            "path",
            "epoch",
            "train images",
            "train s",
            "train img/s",
            "eval s",
            "train+eval s",
            "ckpt+report s",
            "epoch wall s",
            "CPU s",
            "load 1/5/15",
        ]
        print(
            _common.table(
                headers,
                [
                    [
                        r["path"],
                        r["epoch"],
                        int(r["images"]),
                        r["train_s"],
                        r["train_ips"],
                        r["eval_s"],
                        r["epoch_s"],
                        r["extra_s"],
                        r["wall_s"],
                        "-" if math.isnan(r["cpu_s"]) else r["cpu_s"],
                        r["load"],
                    ]
                    for r in rows
                ],
            )
        )
        print(
            "(plain ckpt+report s = a checkpoint.save of the same state, not counted in its epoch; ray epoch "
            "wall = report to report, epoch 0 from fit(): it includes start-up; CPU s = CPU time of the\n"
            " process that trains (plain: train+eval; ray: the worker, report to report, without Ray Data's "
            "augment tasks), which a busy machine inflates far less than wall time)\n"
        )

        steady = lambda path: [r for r in rows if r["path"] == path and r["epoch"] >= 1]  # noqa: E731
        plain = steady("plain")
        ray1 = runs[workers[0]]
        ray_rows = steady(f"ray ({workers[0]}w)")
        p_train, p_epoch, p_ckpt = (
            mean(r["train_s"] for r in plain),
            mean(r["epoch_s"] for r in plain),
            mean(r["extra_s"] for r in plain),
        )
        r_train, r_epoch, r_wall = (mean(r[k] for r in ray_rows) for k in ("train_s", "epoch_s", "wall_s"))
        p_cpu, r_cpu = mean(r["cpu_s"] for r in plain), mean(r["cpu_s"] for r in ray_rows)
        p_ips = mean(r["train_ips"] for r in plain)
        r_ips = mean(r["train_ips"] for r in ray_rows)
        print(
            f"start-up ({workers[0]} worker): fit() -> first report {ray1['first_report_s']:.1f} s, of which epoch 0 "
            f"{ray1['rows'][0]['epoch_s']:.1f} s, so start-up {ray1['startup_s']:.1f} s (incl. saving checkpoint 0 locally); "
            f"last report -> fit() returns {ray1['teardown_s']:.1f} s"
        )
        print(
            f"steady state (epochs >= 1), seconds per epoch: plain train {p_train:.2f}, train+eval {p_epoch:.2f} "
            f"(+{p_ckpt:.2f} if it saved a checkpoint); ray train {r_train:.2f}, train+eval {r_epoch:.2f}, "
            f"report to report {r_wall:.2f}"
        )
        print(
            f"CPU seconds per epoch: plain train+eval {p_cpu:.2f}, ray worker report to report {r_cpu:.2f} "
            f"(ratio {r_cpu / p_cpu:.2f}×)"
        )
        print(f"train images/s: plain {p_ips:,.2f}, ray {r_ips:,.2f} (ratio ray / plain {r_ips / p_ips:.2f}×)")
        size = args.image_size
        achieved = {k: v * gflops_per_train_image(size) for k, v in (("plain", p_ips), ("ray", r_ips))}
        print(
            f"achieved training throughput: plain {achieved['plain']:,.1f} GFLOP/s, ray {achieved['ray']:,.1f} GFLOP/s "
            f"({gflops_per_train_image(size):.2f} GFLOPs per training image at {size} px)"
        )
        figures = {
            "plain_train_s": p_train,
            "plain_epoch_s": p_epoch,
            "plain_ckpt_s": p_ckpt,
            "ray_train_s": r_train,
            "ray_epoch_s": r_epoch,
            "ray_report_interval_s": r_wall,
            "plain_images_per_s": p_ips,
            "ray_images_per_s": r_ips,
            "ray_startup_s": ray1["startup_s"],
            "ratio_train": r_train / p_train,
            "ratio_train_eval": r_epoch / p_epoch,
            "ratio_epoch": r_wall / p_epoch,
            "ratio_cpu": r_cpu / p_cpu,
            "load_1min": os.getloadavg()[0],
        }
        if cuda:
            name, peak = bf16_peak_tflops()
            print(
                f"peak memory: plain {plain_peak / 2**30:.2f} GiB, ray worker rank 0 "
                f"{ray1['peak_memory_bytes'] / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)"
            )
            figures |= {"plain_peak_gib": plain_peak / 2**30, "ray_peak_gib": ray1["peak_memory_bytes"] / 2**30}
            if peak:
                mfu = {k: v / (peak * 1e3) for k, v in achieved.items()}
                print(f"MFU vs {name} dense bf16 peak {peak:g} TFLOPS: plain {mfu['plain']:.1%}, ray {mfu['ray']:.1%}")
                figures |= {"plain_mfu": mfu["plain"], "ray_mfu": mfu["ray"]}
            else:
                print(f"MFU: no dense bf16 peak known for {name!r} (add it to DENSE_BF16_TFLOPS)")
        if len(workers) > 1:
            base = None
            for w in workers:
                ips = w * mean(r["train_ips"] for r in steady(f"ray ({w}w)"))  # rank 0's shard rate x ranks
                base = base or ips / w
                print(
                    f"scaling: {w} workers {ips:,.1f} train images/s, efficiency {ips / (w * base):.0%} "
                    f"of {w} x {workers[0]}-worker rate (start-up {runs[w]['startup_s']:.1f} s)"
                )
                figures[f"scaling_efficiency_{w}w"] = ips / (w * base)
        print(f"load {_common.load()} at end")
        if args.log_mlflow is not None:
            from fracture.track import study_runs

            log_cfg = _common.mlflow_config(args.log_mlflow)
            run_id = study_runs.log_evaluation(
                log_cfg,
                "bench-train-throughput",
                figures,
                [],
                params={
                    "image_size": size,
                    "train_images": len(train_x),
                    "epochs": args.epochs,
                    "workers": args.workers,
                    "device": torch.cuda.get_device_name() if cuda else f"cpu x{os.cpu_count()}",
                    "data": "real" if args.root else "synthetic",
                },
            )
            print(f"logged to MLflow {store.tracking_uri(log_cfg)} run {run_id}")
        print(
            f"ratio ray_train / plain time per epoch: train loop {r_train / p_train:.2f}×, train+eval "
            f"{r_epoch / p_epoch:.2f}×, report to report vs plain train+eval = {r_wall / p_epoch:.2f}× (target <= 1.10×)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
