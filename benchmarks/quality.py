"""python benchmarks/quality.py [--config jobs/studies/fracatlas.yaml] [section.key=value ...]

Quality benchmark on real FracAtlas: train one model through the platform's own path (Ray Data ->
Ray Train, as jobs/train.py does; epoch and threshold chosen on val only), then score the held-out
test split once. Prints val and test AUROC / sensitivity / specificity (test with bootstrap 95% CIs)
and the machine, image size, epochs and weights behind them.

CPU-sized run (≈30 min on 2 cores, no pretrained weights since ImageNet cannot be downloaded here):
    python benchmarks/quality.py data.image_size=64 model.weights=none cluster.use_gpu=false \
        cluster.cpus_per_worker=2 train.epochs=8 train.warmup_epochs=0 optim.lr_head=1.0e-3 optim.lr_backbone=1.0e-4
GPU (224 px, ImageNet weights): python benchmarks/quality.py
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from fracture import checkpoint, cli, evaluate, presets, study

DEFAULT = Path(__file__).resolve().parents[1] / "jobs" / "studies" / "fracatlas.yaml"


def main() -> None:
    cli.setup_logging()
    p = cli.parser(__doc__)
    p.set_defaults(config=DEFAULT)
    cfg, _ = cli.parse(p=p)
    cfg = cfg.replace(name=f"{cfg.name}_quality", search={"num_trials": 1})
    start = time.perf_counter()
    with cli.user_errors():
        study.preflight(cfg)
        cli.init_ray(cfg)
        summary = study.run(cfg, search_space=False)
    train_s = time.perf_counter() - start
    net, state = checkpoint.load_model(summary["checkpoint"])
    threshold = state["threshold"]                       # chosen on val, never on test
    rows = {}
    for split in ("val", "test"):
        frame = evaluate.frame_for(cfg, split)
        probs = evaluate.score(net, frame, cfg.data.image_size)
        rep = evaluate.report(frame[presets.LABEL].values, probs, threshold, frame, seed=cfg.seed)
        rows[split] = rep["overall"] | {"n": rep["images"], "positives": rep["positives"], "ci95": rep["ci95"]}
    machine = (torch.cuda.get_device_name() if torch.cuda.is_available()
               else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads")
    print(f"\n=== quality: {machine}, {cfg.data.image_size} px, {summary['epoch'] + 1}/{cfg.train.epochs} epochs "
          f"(best by val AUROC), weights={state['weights']}, "
          f"train wall {train_s / 60:.1f} min ===")
    print(f"{'split':6s} {'n':>5s} {'pos':>4s} {'AUROC':>7s} {'sens':>6s} {'spec':>6s} {'bal.acc':>7s} {'acc':>6s}")
    for split, r in rows.items():
        print(f"{split:6s} {r['n']:5d} {r['positives']:4d} {r['auc']:7.3f} {r['sensitivity']:6.3f} "
              f"{r['specificity']:6.3f} {r['balanced_accuracy']:7.3f} {r['accuracy']:6.3f}")
    ci = rows["test"]["ci95"]
    print("test 95% CI: " + "  ".join(f"{k} [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in ci.items()))
    print(f"threshold {threshold:.3f} (val, {cfg.train.threshold}); majority-class accuracy on test "
          f"{1 - rows['test']['positives'] / rows['test']['n']:.3f}")
    out = Path(summary["checkpoint"]).parent.parent / "quality.json"
    out.write_text(json.dumps({"machine": machine, "image_size": cfg.data.image_size, "rows": rows,
                               "summary": {k: v for k, v in summary.items() if k != "trials"}}, indent=2, default=str))
    print(f"written {out}")


if __name__ == "__main__":
    main()
