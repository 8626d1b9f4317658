"""python benchmarks/ablate.py --root ../shared/fracatlas --epochs 6 [--variants platform,permute,...] [--out FILE]

Controlled experiments on why a training run does (not) learn: each variant changes one thing
against the platform's former data path (manifest order read through a 256-row local shuffle
buffer, the notebook's augmentation, 70% train) and trains the same model with the plain loop of
`fracture.train.reference.fit` on the real FracAtlas split at 64 px. Prints each variant's train-loss curve and val
AUROC, and appends one JSON line per variant to --out.
"""

from __future__ import annotations

import argparse
import json
import time

import _common

from fracture.train import reference

# The command: from scratch, Adam 1e-4 everywhere, no schedule, no clipping, 64 px, CPU.
BASE = [
    "data.image_size=64",
    "model.weights=none",
    "cluster.use_gpu=false",
    "train.warmup_epochs=0",
    "optim.lr_head=1.0e-4",
    "optim.lr_backbone=1.0e-4",
    "optim.schedule=none",
    "optim.grad_clip=0.0",
    "train.patience=0",
    "model.trainable_blocks=5",
]
VARIANTS = {  # name -> (fit kwargs, extra config overrides)
    "platform": (dict(order="stream", buffer=256, augment="seed"), []),
    "permute": (dict(order="permute", augment="seed"), []),
    "light_aug": (dict(order="stream", buffer=256, augment="light"), []),
    "no_aug": (dict(order="stream", buffer=256, augment="none"), []),
    "train_85": (dict(order="stream", buffer=256, augment="seed"), ["data.test_fraction=0.0", "name=ablation85"]),
    "permute_light": (dict(order="permute", augment="light"), []),
    "permute_seed0": (dict(order="permute", augment="seed", init_seed=0), []),
    "platform_seed0": (dict(order="stream", buffer=256, augment="seed", init_seed=0), []),
    "bn_permute_light": (dict(order="permute", augment="light"), ["model.arch=vgg16_bn"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(_common.ROOT.parent / "shared" / "fracatlas"))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=str(_common.ROOT / "runs" / "ablation.jsonl"))
    args = p.parse_args()
    _common.quiet()
    import ray

    from fracture.core.config import load

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    _common.quiet_data_context()
    arrays: dict[tuple, tuple] = {}
    for name in args.variants.split(","):
        kwargs, extra = VARIANTS[name]
        cfg = load(
            None,
            [
                "name=ablation",
                f"data.root={args.root}",
                f"cluster.storage_path={_common.ROOT / 'runs'}",
                *BASE,
                f"train.epochs={args.epochs}",
                *extra,
            ],
        )
        key = (cfg.name, cfg.data.test_fraction)
        if key not in arrays:
            arrays[key] = (reference.split_arrays(cfg, "train"), reference.split_arrays(cfg, "val"))
        train, val = arrays[key]
        print(
            f"== {name}: {kwargs} {extra}  train {len(train[0])} ({int(train[1].sum())} pos), "
            f"val {len(val[0])} ({int(val[1].sum())} pos)",
            flush=True,
        )
        start = time.perf_counter()
        hist, _ = reference.fit(cfg, train, val, log=lambda s: print(s, flush=True), **kwargs)
        with open(args.out, "a") as f:
            f.write(
                json.dumps(
                    {
                        "variant": name,
                        "kwargs": kwargs,
                        "extra": extra,
                        "epochs": args.epochs,
                        "n_train": len(train[0]),
                        "wall_s": time.perf_counter() - start,
                        "train_loss": [h["train_loss"] for h in hist],
                        "val_auc": [h["val_auc"] for h in hist],
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
