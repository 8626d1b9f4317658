"""The training loop of a trial: adapts a Session (Ray at the edge) to the pure engine.

`train_loop` is the one loop, run either in the Tune trial's own process (session.TrialSession:
one worker, no Ray Train) or by each Ray Train worker of a TorchTrainer (`train_fn_per_worker`,
session.TrainSession: DDP ranks). Every rank reports once per epoch (with `epochs_done`, which
ASHA counts in) with the same global validation metrics: validation is not sharded, every rank
scores the whole val split on the unwrapped model, so no rank ever reports a shard-local AUROC.
Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import numpy as np
import torch

from fracture.core import metrics
from fracture.core.config import Config
from fracture.core.redact import redact_config
from fracture.data import pipeline
from fracture.model import checkpoint, engine
from fracture.model.network import build_model
from fracture.train.early_stop import Progress
from fracture.train.session import TrainSession

log = logging.getLogger(__name__)


def batches(session, cfg: Config, split: str, epoch: int):
    """This rank's {"image": uint8 (B, S, S, 3), "label": (B,)} batches of one epoch (data.epoch_batches)."""
    return pipeline.epoch_batches(session.shard(split), cfg, split, epoch=epoch, rank=session.rank)


# Tune's progress table shows the first four metrics of a report: put the ones to watch there.
SHOWN_FIRST = (metrics.PRIMARY, "val_sensitivity", "val_specificity", metrics.EPOCHS_DONE)


def _shown_first(result: dict) -> dict:
    return {k: result[k] for k in SHOWN_FIRST if k in result} | result


def _phase_blocks(cfg: Config, epoch: int) -> int:
    return 0 if epoch < cfg.train.warmup_epochs else cfg.model.trainable_blocks


def train_fn_per_worker(loop_config: dict) -> None:
    """Ray Train entry point (TorchTrainer): the loop on this worker's rank."""
    train_loop(loop_config, TrainSession())


@dataclasses.dataclass
class _Run:
    """What one training run holds: the network and its optimizer, schedule, weight average and loss."""

    cfg: Config
    pos_weight: float
    device: torch.device
    net: torch.nn.Module  # unwrapped FractureNet: save, restore and the L2 term use it
    weights: str  # where the backbone's initial weights came from
    optimizer: torch.optim.Optimizer
    scheduler: Any
    average: Any  # engine.weight_average, or None
    loss_fn: torch.nn.Module

    @property
    def scored(self) -> torch.nn.Module:
        """What is validated, checkpointed and registered: the weight average when there is one."""
        return self.average.module if self.average is not None else self.net


def _build(cfg: Config, pos_weight: float, device: torch.device) -> _Run:
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    net, weights = build_model(cfg.model)
    optimizer = engine.build_optimizer(net, cfg.optim)
    return _Run(
        cfg=cfg,
        pos_weight=pos_weight,
        device=device,
        net=net,
        weights=weights,
        optimizer=optimizer,
        scheduler=engine.build_scheduler(optimizer, cfg.optim, epochs=cfg.train.epochs),
        average=engine.weight_average(net, cfg.train.ema_decay, device),
        loss_fn=torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], device=device)),
    )


def _resume(run: _Run, session) -> tuple[int, list, Progress, bool]:
    """Restore the session's newest checkpoint, if any: (first epoch to train, rows each epoch saw, progress, done)."""
    cfg, ranked = run.cfg, metrics.ranked(run.cfg)  # ranked: what early stopping and the best-so-far count
    restored = session.latest_checkpoint()
    state = checkpoint.restore(restored, run.net, run.optimizer, run.scheduler, run.average) or {}
    start = state.get("epoch", -1) + 1
    train_order: list = state.pop("train_order", [])[:start]  # rows each epoch saw (checkpoint.ORDER_FILE)
    progress = Progress.from_state(state, cfg.train.patience, ranked)
    if not state:
        return start, train_order, progress, False
    # Tune may never have received the restored epoch's report: a driver stopped or killed between
    # this report and Tune's next save of the study loses it (its metrics, ASHA's record, and the
    # checkpoint's place in the ranking). Report it again, pointing at the checkpoint the session
    # already stored; the driver's MLflow logger skips a replay it holds.
    replay = {"weights": state["weights"], "early_stopped": progress.stopped, "replayed": True}
    session.report(_shown_first(state["metrics"]) | replay | {"checkpoint_path": restored.path})
    done = start >= cfg.train.epochs or progress.stopped
    if done:
        log.info("restored a finished run (epoch %d): its last result reported again", start - 1)
    else:
        log.info("resuming from epoch %d (best %s %.4f)", start, ranked, progress.best)
    return start, train_order, progress, done


def _wrap(run: _Run, session, blocks: int) -> torch.nn.Module:
    """The model to train with `blocks` of the backbone trainable, on the session's device (DDP when several ranks).

    Wrapped anew per phase: DDP registers only parameters that require grad at wrap time, so
    unfreezing the backbone after warm-up needs a fresh wrapper.
    """
    run.net.set_trainable_blocks(blocks)
    model = session.prepare_model(run.net)
    return torch.compile(model) if run.cfg.train.compile else model  # recompiles per phase


def _train_and_validate(run: _Run, session, model: torch.nn.Module, epoch: int, train_order: list) -> dict:
    """One epoch of training, then the whole val split on the scored model: the epoch's metrics."""
    cfg, seen = run.cfg, []
    average = run.average
    result = engine.train_one_epoch(
        model,
        run.optimizer,
        batches(session, cfg, "train", epoch),
        loss_fn=run.loss_fn,
        penalty=run.net.l2_penalty,
        device=run.device,
        grad_clip=cfg.optim.grad_clip,
        seen_rows=seen,
        after_step=(lambda: average.update_parameters(run.net)) if average is not None else None,
        precision=cfg.train.precision,
    )
    train_order.append(np.concatenate(seen) if seen else np.zeros(0, np.int64))
    return result | engine.evaluate(
        run.scored,
        batches(session, cfg, "val", epoch),
        device=run.device,
        threshold=cfg.train.threshold,
        target_sensitivity=cfg.train.target_sensitivity,
        objective_sensitivity=cfg.search.target_sensitivity,
        pos_weight=run.pos_weight,
    )


def _saver(run: _Run, epoch: int, result: dict, progress: Progress, train_order: list):
    """Writes this epoch's checkpoint into the directory it is given (the session calls it on rank 0)."""
    return functools.partial(
        checkpoint.save,
        net=run.scored,
        optimizer=run.optimizer,
        state={
            "epoch": epoch,
            "config": redact_config(run.cfg.to_dict()),  # uploaded with the registered model
            "threshold": result["val_threshold"],
            "metrics": result,
            "weights": run.weights,
            "pos_weight": run.pos_weight,
            **progress.state(),
        },
        scheduler=run.scheduler,
        train_order=train_order,
        train_net=run.net if run.average is not None else None,
    )


def train_loop(loop_config: dict, session) -> None:
    """Train one config. loop_config = {"config": Config.to_dict(), "pos_weight": float}; session:
    a fracture.train.session.TrialSession or TrainSession (where it runs: rank, device, data, checkpoints, reports)."""
    cfg = Config.from_dict(loop_config["config"])
    run = _build(cfg, loop_config["pos_weight"], session.device)
    start, train_order, progress, done = _resume(run, session)
    if done:
        return
    ranked, model, blocks = metrics.ranked(cfg), None, None
    for epoch in range(start, cfg.train.epochs):
        if _phase_blocks(cfg, epoch) != blocks:
            blocks = _phase_blocks(cfg, epoch)
            model = _wrap(run, session, blocks)
        tick = time.perf_counter()
        result = _train_and_validate(run, session, model, epoch, train_order)
        stop = progress.update(result[ranked])
        engine.step_scheduler(run.scheduler, result[ranked])
        result |= {
            "epoch": epoch,
            metrics.EPOCHS_DONE: epoch + 1,
            metrics.best(cfg): progress.best,
            "trainable_blocks": blocks,
            "lr_head": run.optimizer.param_groups[0]["lr"],
            "lr_backbone": run.optimizer.param_groups[1]["lr"],
            "epoch_s": time.perf_counter() - tick,
            "device": run.device.type,  # where this rank trained: a one-GPU trial shows that it got its GPU
        }
        progress.record(result)
        report = _shown_first(result) | {"weights": run.weights, "early_stopped": stop}
        session.report(report, save=_saver(run, epoch, result, progress, train_order))
        if stop:
            log.info("early stop at epoch %d: %s has not improved for %d epochs", epoch, ranked, progress.stale)
            break
