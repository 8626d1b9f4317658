"""The training loop of a trial: adapts a Session (Ray at the edge) to the pure engine.

`train_loop` is the one loop, run either in the Tune trial's own process (session.TrialSession:
one worker, no Ray Train) or by each Ray Train worker of a TorchTrainer (`train_fn_per_worker`,
session.TrainSession: DDP ranks). Every rank reports once per epoch (with `epochs_done`, which
ASHA counts in) with the same global validation metrics: validation is not sharded, every rank
scores the whole val split on the unwrapped model, so no rank ever reports a shard-local AUROC.
Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import functools
import logging
import time

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


def train_loop(loop_config: dict, session) -> None:
    """Train one config. loop_config = {"config": Config.to_dict(), "pos_weight": float}; session:
    a fracture.train.session.TrialSession or TrainSession (where it runs: rank, device, data, checkpoints, reports)."""
    cfg = Config.from_dict(loop_config["config"])
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    device = session.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    net, weights_source = build_model(cfg.model)
    optimizer = engine.build_optimizer(net, cfg.optim)
    scheduler = engine.build_scheduler(optimizer, cfg.optim, epochs=cfg.train.epochs)
    average = engine.weight_average(net, cfg.train.ema_decay, device)
    scored = average.module if average is not None else net  # what is validated, checkpointed, registered
    restored = session.latest_checkpoint()
    state = checkpoint.restore(restored, net, optimizer, scheduler, average) or {}
    start = state.get("epoch", -1) + 1
    train_order: list = state.pop("train_order", [])[:start]  # rows each epoch saw (checkpoint.ORDER_FILE)
    ranked = metrics.ranked(cfg)  # what early stopping, the LR plateau and the best-so-far count
    progress = Progress.from_state(state, cfg.train.patience, ranked)
    if state:
        # Tune may never have received the restored epoch's report: a driver stopped or killed
        # between this report and Tune's next save of the study loses it (its metrics, ASHA's
        # record, and the checkpoint's place in the ranking). Report it again, pointing at the
        # checkpoint the session already stored; the driver's MLflow logger skips a replay it holds.
        session.report(
            _shown_first(state["metrics"])
            | {
                "weights": state["weights"],
                "early_stopped": progress.stopped,
                "replayed": True,
                "checkpoint_path": restored.path,
            }
        )
        if start >= cfg.train.epochs or progress.stopped:
            log.info("restored a finished run (epoch %d): its last result reported again", start - 1)
            return
    if start:
        log.info("resuming from epoch %d (best %s %.4f)", start, ranked, progress.best)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([loop_config["pos_weight"]], device=device))

    model, blocks = None, None
    for epoch in range(start, cfg.train.epochs):
        if _phase_blocks(cfg, epoch) != blocks:
            # (Re-)wrap per phase: DDP registers only parameters that require grad at wrap time,
            # so unfreezing the backbone after warm-up needs a fresh wrapper.
            blocks = _phase_blocks(cfg, epoch)
            net.set_trainable_blocks(blocks)
            model = session.prepare_model(net)
            if cfg.train.compile:
                model = torch.compile(model)  # recompiles per phase: the set of trained params changed
        tick = time.perf_counter()
        seen: list = []
        result = engine.train_one_epoch(
            model,
            optimizer,
            batches(session, cfg, "train", epoch),
            loss_fn=loss_fn,
            penalty=net.l2_penalty,
            device=device,
            grad_clip=cfg.optim.grad_clip,
            seen_rows=seen,
            after_step=(lambda: average.update_parameters(net)) if average is not None else None,
            precision=cfg.train.precision,
        )
        train_order.append(np.concatenate(seen) if seen else np.zeros(0, np.int64))
        result |= engine.evaluate(
            scored,
            batches(session, cfg, "val", epoch),
            device=device,
            threshold=cfg.train.threshold,
            target_sensitivity=cfg.train.target_sensitivity,
            objective_sensitivity=cfg.search.target_sensitivity,
            pos_weight=loop_config["pos_weight"],
        )
        score = result[ranked]
        stop = progress.update(score)
        engine.step_scheduler(scheduler, score)
        result |= {
            "epoch": epoch,
            metrics.EPOCHS_DONE: epoch + 1,
            metrics.best(cfg): progress.best,
            "trainable_blocks": blocks,
            "lr_head": optimizer.param_groups[0]["lr"],
            "lr_backbone": optimizer.param_groups[1]["lr"],
            "epoch_s": time.perf_counter() - tick,
            "device": device.type,  # where this rank trained: a one-GPU trial shows that it got its GPU
        }
        progress.record(result)
        save = functools.partial(
            checkpoint.save,
            net=scored,
            optimizer=optimizer,
            state={
                "epoch": epoch,
                "config": redact_config(cfg.to_dict()),  # uploaded with the registered model
                "threshold": result["val_threshold"],
                "metrics": result,
                "weights": weights_source,
                "pos_weight": loop_config["pos_weight"],
                **progress.state(),
            },
            scheduler=scheduler,
            train_order=train_order,
            train_net=net if average is not None else None,
        )
        session.report(_shown_first(result) | {"weights": weights_source, "early_stopped": stop}, save=save)
        if stop:
            log.info("early stop at epoch %d: %s has not improved for %d epochs", epoch, ranked, progress.stale)
            break
