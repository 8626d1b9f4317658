"""The plain PyTorch training loop the platform's is measured against: over in-memory arrays, no Ray.

The same model, optimizer, loss, engine functions and augmentation presets as the worker, fed by a
Python generator whose order and augmentation are set by knobs. The bit-identity test
(tests/integration/test_platform_matches_plain.py), the ablation and the side-by-side quality
benchmark all train through `fit`, so they differ from the platform only in what the knobs say.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from fracture.core import names
from fracture.data import pipeline, presets
from fracture.model import engine
from fracture.model.network import build_model

ORDERS = ("permute", "platform", "stream", "given")


def split_arrays(cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The decoded cache of a split as in-memory arrays: images uint8 (N, S, S, 3), labels (N,).

    Index i is the image whose ROW is i (its place in the cache), so that seeding image i's
    augmentation by (seed, epoch, i) gives the views the platform's collate gives it.
    """
    parts = list(
        pipeline.decoded(cfg, split, [names.IMAGE, names.LABEL, names.ROW]).iter_batches(
            batch_size=None, batch_format="numpy"
        )
    )
    order = np.argsort(np.concatenate([p[names.ROW] for p in parts]))
    return (
        np.concatenate([p[names.IMAGE] for p in parts])[order],
        np.concatenate([p[names.LABEL] for p in parts])[order],
    )


def _stream_order(n: int, buffer: int, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Index batches as Ray's local shuffle buffer gives them over a stream in stored order.

    Rows enter the buffer in order; once it holds `buffer + batch` rows, a batch is drawn at random
    from it. So a row can only move about `buffer` places: a sorted stream stays nearly sorted.
    """
    pool: list[int] = []
    for i in range(n):
        pool.append(i)
        if len(pool) >= buffer + batch:
            picks = set(rng.choice(len(pool), size=batch, replace=False).tolist())
            yield np.array([pool[j] for j in sorted(picks)])
            pool = [v for j, v in enumerate(pool) if j not in picks]
    rest = rng.permutation(pool)
    for k in range(0, len(rest), batch):
        yield rest[k : k + batch]


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch: int,
    order: str,
    buffer: int,
    augment: str,
    seed: int,
    epoch: int,
    rows: np.ndarray | None = None,
) -> Iterator[dict]:
    """One epoch of engine batches {"image": uint8 (B, S, S, 3), "label": (B,)}; `rows` for order="given"."""
    # "platform": what the worker's batch iterator draws over a one-block cache (FracAtlas at <= 64 px):
    # Ray Data's local shuffle buffer takes the block whole and slices one permutation of it, from a
    # generator seeded by the buffer's seed, data.epoch_seed(seed, epoch, rank 0).
    rng = np.random.default_rng(pipeline.epoch_seed(seed, epoch, 0) if order == "platform" else [seed, epoch])
    if order == "given":
        chunks = (rows[k : k + batch] for k in range(0, len(rows), batch))
    elif order in ("permute", "platform"):
        perm = rng.permutation(len(images))
        chunks = (perm[k : k + batch] for k in range(0, len(perm), batch))
    else:
        chunks = _stream_order(len(images), buffer, batch, rng)
    for idx in chunks:
        x = images[idx]
        if augment != "none":
            x = presets.augment(x, strength=augment, seeds=[[seed, epoch, int(i)] for i in idx])
        yield {names.IMAGE: torch.from_numpy(x), names.LABEL: torch.from_numpy(labels[idx])}


def fit(
    cfg,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    order: str = "permute",
    buffer: int = 256,
    augment: str | None = None,
    init_seed: int | None = None,
    rows: list[np.ndarray] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], dict]:
    """Train cfg's model on `train` for cfg.train.epochs and score `val` after every epoch.

    Args:
        order: "permute" (a fresh permutation each epoch, from the loop's own generator),
            "platform" (the permutation the platform's worker draws for the same seed and epoch on
            a one-block cache: then both sides see the same batches and the same augmented views)
            or "stream" (stored order through a local shuffle buffer of `buffer` rows, as the
            platform read a many-block cache before), or "given" (rows[epoch], e.g. the order a
            trial recorded in its checkpoint: checkpoint.read_train_order).
        augment: a names.AUGMENTS strength; default cfg.data.augment.
        init_seed: torch seed for the initial weights; default cfg.seed (what the worker uses).
    Returns:
        (one dict per epoch: epoch, train_loss, val_auc, val_sensitivity, ..., epoch_s;
         the weights (state dict) of the epoch with the best val AUROC, as the platform keeps it).
    """
    torch.manual_seed(cfg.seed if init_seed is None else init_seed)
    device = torch.device("cpu")
    net, _ = build_model(cfg.model)
    net.set_trainable_blocks(cfg.model.trainable_blocks)
    optimizer = engine.build_optimizer(net, cfg.optim)
    scheduler = engine.build_scheduler(optimizer, cfg.optim, epochs=cfg.train.epochs)
    average = engine.weight_average(net, cfg.train.ema_decay, device)
    scored = average.module if average is not None else net  # as the worker scores and keeps it
    labels = train[1]
    pos_weight = (
        float((labels == 0).sum() / max((labels == 1).sum(), 1)) if cfg.train.imbalance == "pos_weight" else 1.0
    )
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))
    strength = cfg.data.augment if augment is None else augment
    bs = cfg.train.batch_size_per_worker
    history, best = [], None
    for epoch in range(cfg.train.epochs):
        tick = time.perf_counter()
        row = engine.train_one_epoch(
            net,
            optimizer,
            batches(
                *train,
                batch=bs,
                order=order,
                buffer=buffer,
                augment=strength,
                seed=cfg.seed,
                epoch=epoch,
                rows=rows[epoch] if rows is not None else None,
            ),
            loss_fn=loss_fn,
            penalty=net.l2_penalty,
            device=device,
            grad_clip=cfg.optim.grad_clip,
            after_step=(lambda: average.update_parameters(net)) if average is not None else None,
            precision=cfg.train.precision,
        )
        val_batches = (
            {names.IMAGE: torch.from_numpy(val[0][k : k + 128]), names.LABEL: torch.from_numpy(val[1][k : k + 128])}
            for k in range(0, len(val[0]), 128)
        )
        row |= engine.evaluate(scored, val_batches, device=device, threshold=cfg.train.threshold)
        engine.step_scheduler(scheduler, row["val_auc"])
        row |= {"epoch": epoch, "epoch_s": time.perf_counter() - tick}
        history.append(row)
        if best is None or row["val_auc"] > max(h["val_auc"] for h in history[:-1]):
            best = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        log(
            f"  epoch {epoch:2d}  train_loss {row['train_loss']:.4f}  val_auc {row['val_auc']:.4f}  "
            f"sens {row['val_sensitivity']:.3f}  spec {row['val_specificity']:.3f}  {row['epoch_s']:.0f}s"
        )
    return history, best
