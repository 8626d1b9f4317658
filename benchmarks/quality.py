"""python benchmarks/quality.py [--plain] [--config jobs/studies/fracatlas.yaml] [section.key=value ...]

Quality benchmark on real FracAtlas: train one model through the platform's own path (Ray Data ->
Ray Train, as jobs/train.py does; epoch and threshold chosen on val only), then score the held-out
test split once. Prints val and test AUROC / sensitivity / specificity (test with bootstrap 95% CIs)
and the machine, image size, epochs and weights behind them.

--plain first trains the same recipe on the same decoded arrays with a plain PyTorch loop
(fracture.train.reference: the same model, initial weights, loss, optimizer and augmentation preset),
then through the platform, and prints both learning curves side by side, writes them as a PNG, and
gives the ratio of best val AUROC, platform / plain (goal >= 0.98 at equal epochs).
--plain-order says which batches the plain loop sees: "platform" (default) the very permutation
the platform's worker draws for each epoch on a one-block cache, so both sides train on the same
batches and views and any gap is the platform's own doing; "permute" a permutation of the loop's
own, so the gap also holds ordinary seed-to-seed noise. --plain-only skips the platform side.

CPU, from scratch (no ImageNet download here), both sides, ≈35 min each on 2 cores:
    python benchmarks/quality.py --plain --config jobs/studies/cpu_scratch.yaml
GPU (224 px, ImageNet weights): python benchmarks/quality.py
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import _common
import numpy as np
import torch

from fracture import cli, study
from fracture.core import names
from fracture.evaluate import holdout, scoring
from fracture.model import checkpoint
from fracture.model.network import build_model
from fracture.runtime import cluster
from fracture.train import reference

DEFAULT = Path(__file__).resolve().parents[1] / "jobs" / "studies" / "fracatlas.yaml"


def _machine() -> str:
    return (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )


def _evaluate(cfg, net, threshold: float) -> dict:
    rows = {}
    for split in ("val", "test"):
        frame = scoring.frame_for(cfg, split)
        probs = scoring.score(net, frame, cfg.data.image_size)
        rep = holdout.report(frame[names.LABEL].values, probs, threshold, frame, seed=cfg.seed)
        rows[split] = rep["overall"] | {"n": rep["images"], "positives": rep["positives"], "ci95": rep["ci95"]}
    return rows


def _print_rows(title: str, rows: dict, threshold: float, cfg) -> None:
    print(f"\n--- {title} ---")
    print(f"{'split':6s} {'n':>5s} {'pos':>4s} {'AUROC':>7s} {'sens':>6s} {'spec':>6s} {'bal.acc':>7s} {'acc':>6s}")
    for split, r in rows.items():
        print(
            f"{split:6s} {r['n']:5d} {r['positives']:4d} {r['auc']:7.3f} {r['sensitivity']:6.3f} "
            f"{r['specificity']:6.3f} {r['balanced_accuracy']:7.3f} {r['accuracy']:6.3f}"
        )
    ci = rows["test"]["ci95"]
    print("test 95% CI: " + "  ".join(f"{k} [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in ci.items()))
    print(
        f"threshold {threshold:.3f} (val, {cfg.train.threshold}); majority-class accuracy on test "
        f"{1 - rows['test']['positives'] / rows['test']['n']:.3f}"
    )


def _platform_curve(study_dir: str) -> list[dict]:
    """Every epoch the platform's trial reported (Tune's progress), in order."""
    from ray.tune import ExperimentAnalysis

    frames = list(ExperimentAnalysis(study_dir).trial_dataframes.values())
    frame = frames[0].sort_values("epoch")
    return frame[["epoch", "train_loss", "val_auc"]].to_dict("records")


def _plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in curves.items():
        epochs = [r["epoch"] + 1 for r in rows]
        loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label=name)
        auc_ax.plot(epochs, [r["val_auc"] for r in rows], marker="o", label=name)
    loss_ax.set(xlabel="epoch", ylabel="train loss (BCE, pos_weight)", title="train loss")
    auc_ax.set(xlabel="epoch", ylabel="val AUROC", title="val AUROC")
    for ax in (loss_ax, auc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    cli.setup_logging()
    p = cli.parser(__doc__)
    p.add_argument("--plain", action="store_true", help="also train the plain torch loop on the same arrays, first")
    p.add_argument(
        "--plain-order",
        choices=("platform", "permute"),
        default="platform",
        help="the plain loop's batches: the platform's own permutation each epoch (default) or its own",
    )
    p.add_argument("--plain-only", action="store_true", help="train and score only the plain loop (implies --plain)")
    p.set_defaults(config=DEFAULT)
    cfg, args = cli.parse(p=p)
    args.plain = args.plain or args.plain_only
    cfg = cfg.replace(name=f"{cfg.name}_quality", search={"num_trials": 1})
    out_dir = cfg.run_dir
    report: dict = {"machine": _machine(), "image_size": cfg.data.image_size, "epochs": cfg.train.epochs}
    with cli.user_errors():
        study.preflight(cfg)
        cluster.init_ray(cfg)
        curves: dict[str, list[dict]] = {}
        if args.plain:
            _common.quiet_data_context()
            train, val = reference.split_arrays(cfg, "train"), reference.split_arrays(cfg, "val")
            print(
                f"plain torch loop: train {len(train[0])} images, val {len(val[0])}, "
                f"{cfg.train.epochs} epochs at {cfg.data.image_size} px, order {args.plain_order}",
                flush=True,
            )
            start = time.perf_counter()
            curves["plain torch"], best_state = reference.fit(
                cfg, train, val, order=args.plain_order, log=lambda s: print(s, flush=True)
            )
            report["plain_wall_s"] = time.perf_counter() - start
            net, _ = build_model(cfg.model.__class__(**{**cfg.model.__dict__, "weights": "none"}))
            net.load_state_dict(best_state)
            best = max(curves["plain torch"], key=lambda r: r["val_auc"])
            report["plain"] = _evaluate(cfg, net.eval(), best["val_threshold"])
            _print_rows(f"plain torch loop (best epoch {best['epoch']})", report["plain"], best["val_threshold"], cfg)
        if not args.plain_only:
            start = time.perf_counter()
            summary = study.run(cfg, search_space=False)
            report["platform_wall_s"] = time.perf_counter() - start
    if not args.plain_only:
        net, state = checkpoint.load_model(summary["checkpoint"])
        report["platform"] = _evaluate(cfg, net, state["threshold"])  # threshold chosen on val, never on test
        _print_rows(
            f"platform: Ray Data -> Ray Train (best epoch {summary['epoch']})",
            report["platform"],
            state["threshold"],
            cfg,
        )
        curves["platform (Ray Data -> Ray Train)"] = _platform_curve(summary["study_dir"])
        report["summary"] = {k: v for k, v in summary.items() if k != "trials"}
    walls = "  ".join(
        f"{side} train wall {report[f'{side}_wall_s'] / 60:.1f} min"
        for side in ("plain", "platform")
        if f"{side}_wall_s" in report
    )
    print(
        f"\n=== quality: {report['machine']}, {cfg.data.image_size} px, {cfg.train.epochs} epochs, "
        f"weights={state['weights'] if not args.plain_only else cfg.model.weights}, arch={cfg.model.arch}, augment={cfg.data.augment}, seed {cfg.seed}; {walls} ==="
    )
    names = list(curves)
    print(f"{'epoch':>5s}  " + "  ".join(f"{n[:22]:>22s} loss / AUROC" for n in names))
    for i in range(max(len(c) for c in curves.values())):
        cells = [
            f"{c[i]['train_loss']:>22.4f} / {c[i]['val_auc']:.3f}" if i < len(c) else " " * 30 for c in curves.values()
        ]
        print(f"{i:5d}  " + "  ".join(cells))
    report["curves"] = curves
    if len(curves) == 2:
        best_plain = max(r["val_auc"] for r in curves["plain torch"])
        best_platform = max(r["val_auc"] for r in curves[names[-1]])
        report["ratio_best_val_auc"] = best_platform / best_plain
        print(
            f"best val AUROC: platform {best_platform:.4f} / plain {best_plain:.4f} = "
            f"ratio {report['ratio_best_val_auc']:.3f} (goal >= 0.98; plain order {args.plain_order})"
        )
    if args.plain:
        png = out_dir / ("quality_plain_curves.png" if args.plain_only else "quality_curves.png")
        _plot(
            curves,
            png,
            f"{cfg.name}: {cfg.data.image_size} px, {cfg.model.arch}, augment {cfg.data.augment}, "
            f"seed {cfg.seed} ({report['machine']})",
        )
        print(f"learning curves: {png}")
    out = out_dir / ("quality_plain.json" if args.plain_only else "quality.json")
    out.write_text(json.dumps(report, indent=2, default=lambda v: float(v) if isinstance(v, np.floating) else str(v)))
    print(f"written {out}")


if __name__ == "__main__":
    main()
