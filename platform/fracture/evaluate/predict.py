"""Batch prediction with Ray Data: `ds.map_batches(Predictor, ...)` over rows of {image_id, path}.

Each actor loads the checkpoint once and decodes with presets.decode_batch at the size the model
was trained at (the same decode_resize as training); the model normalises its own input. The
decision rule is the checkpoint's: predicted = probability >= state["threshold"]. Decoding is the
check that a file is an image: a file that does not decode is left out of its batch with its
reason, so one bad file never costs the predictions of the good ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fracture.core.config import Config
from fracture.core.names import ID, IMAGE, PATH, REASON
from fracture.data import presets
from fracture.model import checkpoint, engine

log = logging.getLogger(__name__)

PROBABILITY = "probability"
PREDICTED = "predicted"
BATCH_SIZE = 64
ROWS_PER_BLOCK = 4 * BATCH_SIZE  # several blocks, so two actors (or GPUs) can share the work


class Predictor:
    """Callable class for `map_batches`: {image_id, path} -> {image_id, probability, predicted, reason}.

    A row whose file does not decode gets probability nan and its reason ("" for the others).

    Args:
        ckpt_dir: a checkpoint directory every actor can read (local for one node; shared storage
            on a cluster).
        allow_truncated: load what decodes of a truncated JPEG (the run's data.allow_truncated, as
            the audit that chose the rows and jobs/evaluate.py use it; not the training run's).
    """

    def __init__(self, ckpt_dir: str, allow_truncated: bool = False):
        net, state = checkpoint.load_model(ckpt_dir)
        cfg = Config.from_dict(state["config"])
        self.device = engine.default_device()
        self.net = net.to(self.device)
        self.size = cfg.data.image_size
        self.allow_truncated = allow_truncated
        self.threshold = float(state["threshold"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = presets.decode_batch(batch, size=self.size, allow_truncated=self.allow_truncated, mark_unreadable=True)
        ok = batch[REASON] == ""
        probs = np.full(ok.size, np.nan, np.float32)
        if ok.any():
            probs[ok] = engine.predict_batch(self.net, batch[IMAGE][ok], self.device)
        predicted = (probs >= self.threshold).astype(np.int8)
        return {ID: batch[ID], PROBABILITY: probs, PREDICTED: predicted, REASON: batch[REASON]}


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


def predict_paths(
    ckpt_dir: str | Path, frame: pd.DataFrame, *, batch_size: int = BATCH_SIZE, allow_truncated: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every row of `frame` whose file decodes, with Ray Data (needs ray.init() first).

    Args:
        ckpt_dir, allow_truncated: see Predictor.
        frame: rows with unique `image_id` and `path`.
    Returns:
        (predictions: image_id, probability (float32 in [0, 1]), predicted (0/1), in `frame`'s
        order, for the rows that decoded; skipped: path, reason for the rows that did not).
    """
    import ray.data

    rows = frame[[ID, PATH]].reset_index(drop=True)
    if rows.empty:  # Ray Data cannot build a dataset of no blocks
        return pd.DataFrame(columns=[ID, PROBABILITY, PREDICTED]), pd.DataFrame(columns=[PATH, REASON])
    blocks = [rows.iloc[i : i + ROWS_PER_BLOCK] for i in range(0, len(rows), ROWS_PER_BLOCK)]
    resources = _actor_resources()
    log.info("predicting %d images with %s", len(rows), {k: v for k, v in resources.items() if k != "compute"})
    out = (
        ray.data.from_pandas(blocks)
        .map_batches(
            Predictor,
            fn_constructor_kwargs={"ckpt_dir": str(ckpt_dir), "allow_truncated": allow_truncated},
            batch_size=batch_size,
            batch_format="numpy",
            **resources,
        )
        .to_pandas()
    )
    # Actors finish blocks in any order: restore the frame's.
    out = rows.merge(out, on=ID, how="left", validate="one_to_one")
    failed = out[REASON] != ""
    return (
        out.loc[~failed, [ID, PROBABILITY, PREDICTED]].reset_index(drop=True),
        out.loc[failed, [PATH, REASON]].reset_index(drop=True),
    )
