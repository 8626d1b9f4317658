"""Early stopping and the per-epoch history a trial carries across restores.

Pure bookkeeping (no torch, no Ray), so the stopping rule is unit-tested without a worker. The
checkpoint's state.json holds best_val_auc, stale_epochs and history; a restored trial resumes
its patience count from them instead of starting it over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """Best validation AUROC so far, epochs since it last improved, and every epoch's result.

    patience: epochs without improvement before stopping; 0 never stops.
    """

    patience: int
    best: float = float("-inf")
    stale: int = 0
    history: list[dict] = field(default_factory=list)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], patience: int) -> Progress:
        """Resume from a checkpoint's state (checkpoint.restore); an empty state starts afresh."""
        return cls(
            patience=patience,
            best=state.get("best_val_auc", float("-inf")),
            stale=state.get("stale_epochs", 0),
            history=state.get("history", []),
        )

    @property
    def stopped(self) -> bool:
        """True once `patience` epochs in a row have not improved (a restored run may already be)."""
        return 0 < self.patience <= self.stale

    def update(self, auc: float) -> bool:
        """Count one epoch's AUROC; a tie is not an improvement (nor is NaN). Returns whether to stop."""
        if auc > self.best:
            self.best, self.stale = auc, 0
        else:
            self.stale += 1
        return self.stopped

    def record(self, result: dict) -> None:
        """Append an epoch's full result (reported metrics) to the history saved with the checkpoint."""
        self.history.append(result)

    def state(self) -> dict[str, Any]:
        """The checkpoint state's keys for this: best_val_auc, stale_epochs, history."""
        return {"best_val_auc": self.best, "stale_epochs": self.stale, "history": self.history}
