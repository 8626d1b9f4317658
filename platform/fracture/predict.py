"""Batch prediction with Ray Data: `ds.map_batches(Predictor, ...)` over rows of {image_id, path}.

Each actor loads the checkpoint once and decodes with presets.decode_batch at the size the model
was trained at (the same decode_resize as training); the model normalises its own input. The
decision rule is the checkpoint's: predicted = probability >= state["threshold"].
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fracture import checkpoint, engine, presets
from fracture.config import Config
from fracture.presets import ID, IMAGE, PATH

log = logging.getLogger(__name__)

PROBABILITY = "probability"
PREDICTED = "predicted"
BATCH_SIZE = 64
ROWS_PER_BLOCK = 4 * BATCH_SIZE  # several blocks, so two actors (or GPUs) can share the work


class Predictor:
    """Callable class for `map_batches`: {image_id, path} -> {image_id, probability, predicted}.

    Args:
        ckpt_dir: a checkpoint directory every actor can read (local for one node; shared storage
            on a cluster).
    """

    def __init__(self, ckpt_dir: str):
        net, state = checkpoint.load_model(ckpt_dir)
        cfg = Config.from_dict(state["config"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = net.to(self.device).eval()
        self.size = cfg.data.image_size
        self.allow_truncated = cfg.data.allow_truncated
        self.threshold = float(state["threshold"])

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = presets.decode_batch(batch, size=self.size, allow_truncated=self.allow_truncated)
        x = engine.to_model_input(torch.from_numpy(batch[IMAGE]), self.device)  # (B, 3, S, S) in [0, 1]
        with engine.autocast(self.device):
            logits = self.net(x)  # (B, 1)
        probs = torch.sigmoid(logits.float()).view(-1).cpu().numpy()
        return {ID: batch[ID], PROBABILITY: probs, PREDICTED: (probs >= self.threshold).astype(np.int8)}


def _actor_resources() -> dict:
    """One actor per GPU (at most 2); on CPU one actor holding half the CPUs (Ray gives it as many torch threads)."""
    import ray
    import ray.data

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return {"num_gpus": 1, "compute": ray.data.ActorPoolStrategy(size=min(2, gpus))}
    cpus = max(1, min(8, int(resources.get("CPU", 1)) // 2))
    return {"num_cpus": cpus, "compute": ray.data.ActorPoolStrategy(size=1)}


def predict_paths(ckpt_dir: str | Path, frame: pd.DataFrame, *, batch_size: int = BATCH_SIZE) -> pd.DataFrame:
    """Score every row of `frame` with Ray Data (needs ray.init() first).

    Args:
        ckpt_dir: checkpoint directory (see Predictor).
        frame: rows with unique `image_id` and `path`.
    Returns:
        image_id, probability (float32 in [0, 1]), predicted (0/1), in `frame`'s order.
    """
    import ray.data

    rows = frame[[ID, PATH]].reset_index(drop=True)
    blocks = [rows.iloc[i : i + ROWS_PER_BLOCK] for i in range(0, len(rows), ROWS_PER_BLOCK)]
    resources = _actor_resources()
    log.info("predicting %d images with %s", len(rows), {k: v for k, v in resources.items() if k != "compute"})
    out = (
        ray.data.from_pandas(blocks)
        .map_batches(
            Predictor,
            fn_constructor_kwargs={"ckpt_dir": str(ckpt_dir)},
            batch_size=batch_size,
            batch_format="numpy",
            **resources,
        )
        .to_pandas()
    )
    # Actors finish blocks in any order: restore the frame's.
    return rows[[ID]].merge(out, on=ID, how="left", validate="one_to_one")
