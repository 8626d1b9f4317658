"""Training and evaluation loops in plain PyTorch over any iterable of {"image", "label"} batches.

Batches hold uint8 images (N, H, W, 3) as Ray Data yields them; `to_model_input` turns them into the
float (N, 3, H, W) in [0, 1] that FractureNet normalises itself. `predict_batch` is the one place
that turns such images into fracture probabilities: training validation, evaluation and batch
prediction all call it, so their scores cannot drift apart. No Ray, no MLflow, no files here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from fracture.core import metrics
from fracture.core.config import OptimConfig
from fracture.core.names import IMAGE, LABEL, ROW
from fracture.model.network import FractureNet, param_groups

Batch = dict[str, torch.Tensor]


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU: where scoring outside Ray Train runs (Ray Train picks its own)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] on `device` (channels_last on CUDA)."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    # permute of an NHWC tensor already *is* channels_last memory: keep it so on CUDA, where cuDNN
    # runs VGG's convolutions faster in NHWC; on CPU contiguous NCHW is the fast layout.
    return x if device.type == "cuda" else x.contiguous()


def native_bf16(device: torch.device) -> bool:
    """The device computes bf16 natively: a CUDA GPU, or a CPU with AVX512-BF16 / AMX (oneDNN's check).

    Elsewhere bf16 on the CPU is emulated, and slower than fp32.
    """
    if device.type == "cuda":
        return True
    return (
        device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def autocast(device: torch.device, precision: str = "scoring") -> contextlib.AbstractContextManager:
    """The forward pass's precision: bf16 autocast (no GradScaler needed, unlike fp16) or full fp32.

    Args:
        precision: a training step's train.precision (auto: bf16 where the device computes it
            natively, see native_bf16; bf16; fp32), or "scoring": bf16 on CUDA, fp32 on CPU, as every
            evaluation and prediction runs, whatever precision the model was trained in.
    """
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    elif precision == "scoring":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_optimizer(net: FractureNet, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(net, lr_head=cfg.lr_head, lr_backbone=cfg.lr_backbone)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, epochs: int):
    """Per-epoch LR schedule; `step(val_auc)` works for every kind (non-plateau ones ignore it)."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=1)
    return None


def weight_average(net: nn.Module, decay: float, device: torch.device):
    """An exponential moving average of net's weights and batch-norm statistics, or None when decay is 0.

    Buffers are averaged too (use_buffers): the average's batch norm then matches its weights, with
    no extra pass over the data to re-estimate statistics.
    """
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def step_scheduler(scheduler, val_auc: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_auc)
    elif scheduler is not None:
        scheduler.step()


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    loss_fn: nn.Module,
    penalty: Callable[[], torch.Tensor],
    device: torch.device,
    grad_clip: float = 0.0,
    seen_rows: list | None = None,
    after_step: Callable[[], None] | None = None,
    precision: str = "auto",
) -> dict[str, float]:
    """One pass over `batches`.

    Args:
        model: the (possibly DDP-wrapped) network.
        precision: train.precision, the forward pass's (autocast): auto | bf16 | fp32.
        penalty: the L2 term added to every step's loss (FractureNet.l2_penalty of the unwrapped net).
        grad_clip: max global gradient norm; 0 disables.
        seen_rows: when given, each batch's cache rows (names.ROW, if the batch has them) are
            appended to it as numpy arrays: the order this epoch saw its images in.
        after_step: called after every optimizer step (e.g. to update a weight average).
    Returns:
        train_loss (mean BCE over images, without the penalty), train_images, train_images_per_s.
    """
    model.train()
    total, count, start = 0.0, 0, time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in batches:
        if seen_rows is not None and ROW in batch:
            seen_rows.append(batch[ROW].numpy())
        x = to_model_input(batch[IMAGE], device)
        y = batch[LABEL].to(device, non_blocking=True).float().view(-1, 1)
        with autocast(device, precision):
            logits = model(x)
        data_loss = loss_fn(logits.float(), y)
        loss = data_loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if after_step is not None:
            after_step()
        total += data_loss.item() * len(y)
        count += len(y)
    seconds = time.perf_counter() - start
    return {
        "train_loss": total / max(count, 1),
        "train_images": float(count),
        "train_images_per_s": count / seconds if seconds > 0 else 0.0,
    }


@torch.no_grad()
def predict_batch(model: nn.Module, images: torch.Tensor | np.ndarray, device: torch.device) -> np.ndarray:
    """Fracture probabilities, float32 (N,), of uint8 images (N, H, W, 3).

    The model must already be on `device`; it is put in eval mode (dropout off, batch statistics
    frozen), and runs without gradients under `autocast(device)`.
    """
    model.eval()
    with autocast(device):
        logits = model(to_model_input(torch.as_tensor(images), device))  # (N, 1)
    return torch.sigmoid(logits.float()).view(-1).cpu().numpy()


def predict(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """predict_batch over every batch: (labels, probs) as 1-D numpy arrays."""
    labels, probs = [], []
    for batch in batches:
        probs.append(predict_batch(model, batch[IMAGE], device))
        labels.append(batch[LABEL].view(-1).cpu().numpy())
    if not probs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(labels).astype(np.int64), np.concatenate(probs)


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device,
    threshold: str = "youden",
    target_sensitivity: float = 0.9,
    objective_sensitivity: float | None = None,
    pos_weight: float | None = None,
) -> dict[str, float]:
    """Validation metrics over all of `batches`, with the decision threshold chosen on them.

    Args:
        objective_sensitivity: when given (search.target_sensitivity), also what a study can rank
            by (metrics.ranking_metrics): val_spec_at_sens at it, val_auc_lower, val_spec_at_sens_lower.
        pos_weight: the training loss's weight on positives; when given, also val_loss_weighted, the
            val loss on train_loss's scale (val_loss is unweighted and sits well below train_loss
            whenever pos_weight > 1, which reads as a gap that is not there).
    Returns:
        val_loss (unweighted BCE), [val_loss_weighted,] val_auc, val_auprc, val_sensitivity,
        val_specificity, val_balanced_accuracy, val_f1, val_accuracy, val_threshold, val_images.
    """
    labels, probs = predict(model, batches, device)
    if len(labels) == 0:
        raise ValueError("evaluation split is empty")
    eps = 1e-7
    p = np.clip(probs.astype(np.float64), eps, 1 - eps)
    positive, negative = labels * np.log(p), (1 - labels) * np.log(1 - p)
    loss = float(-np.mean(positive + negative))
    weighted = {} if pos_weight is None else {"val_loss_weighted": float(-np.mean(pos_weight * positive + negative))}
    cut = metrics.choose_threshold(labels, probs, method=threshold, target_sensitivity=target_sensitivity)
    out = metrics.prefixed(metrics.binary_metrics(labels, probs, cut), "val")
    if objective_sensitivity is not None:
        ranking = metrics.ranking_metrics(labels, probs, target_sensitivity=objective_sensitivity)
        out |= metrics.prefixed(ranking, "val")
    return {"val_loss": loss, **weighted, **out, "val_images": float(len(labels))}
