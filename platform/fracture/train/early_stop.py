"""Early stopping and the per-epoch history a trial carries across restores.

Pure bookkeeping (no torch, no Ray), so the stopping rule is unit-tested without a worker. The
checkpoint's state.json holds best_<metric> (best_val_auc by default), stale_epochs and history;
a restored trial resumes its patience count from them instead of starting it over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fracture.core import metrics


@dataclass
class Progress:
    """Best value of the study's ranking metric so far, epochs since it last improved, and every epoch's result.

    patience: epochs without improvement before stopping; 0 never stops.
    metric: what is counted (metrics.ranked(cfg)); it names the state's best_<metric> key.
    """

    patience: int
    best: float = float("-inf")
    stale: int = 0
    history: list[dict] = field(default_factory=list)
    metric: str = metrics.PRIMARY

    @classmethod
    def from_state(cls, state: Mapping[str, Any], patience: int, metric: str = metrics.PRIMARY) -> Progress:
        """Resume from a checkpoint's state (checkpoint.restore); an empty state starts afresh."""
        return cls(
            patience=patience,
            best=state.get("best_" + metric, float("-inf")),
            stale=state.get("stale_epochs", 0),
            history=state.get("history", []),
            metric=metric,
        )

    @property
    def stopped(self) -> bool:
        """True once `patience` epochs in a row have not improved (a restored run may already be)."""
        return 0 < self.patience <= self.stale

    def update(self, value: float) -> bool:
        """Count one epoch's value of the metric; a tie is not an improvement (nor is NaN). Returns whether to stop."""
        if value > self.best:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        return self.stopped

    def record(self, result: dict) -> None:
        """Append an epoch's full result (reported metrics) to the history saved with the checkpoint."""
        self.history.append(result)

    def state(self) -> dict[str, Any]:
        """The checkpoint state's keys for this: best_<metric>, stale_epochs, history."""
        return {"best_" + self.metric: self.best, "stale_epochs": self.stale, "history": self.history}
