"""The seeded split of a scan's usable rows into train / val / test: by group, stratified by label x body part."""

from __future__ import annotations

import numpy as np
import pandas as pd


def assign_splits(
    df: pd.DataFrame, *, seed: int, val_fraction: float, test_fraction: float, balanced: bool = False
) -> pd.DataFrame:
    """Seeded split of the usable rows into train/val/test, by group, stratified by label x body part.

    Each stratum is shuffled and cut at round(n * fraction); a stratum too small to give val and
    test one group each without emptying train goes wholly to train. With `balanced`, the majority
    class is first subsampled (seeded) to the size of the minority; the rows left out keep
    `usable=True` but get split "".

    Args:
        df: a manifest from `scan`.
        seed: the split seed (same seed, same split).
        val_fraction, test_fraction: shares of each stratum.
        balanced: the seed notebook's subset (all fractured + as many non-fractured).
    Returns:
        A copy of `df` with `split` set.
    """
    out = df.copy()
    out["split"] = ""
    usable = out[out["usable"]]
    groups = usable.groupby("group", sort=True).agg(label=("label", "max"), body_part=("body_part", "first"))
    rng = np.random.default_rng(seed)
    if balanced:
        groups = _balance(groups, rng)
    split_of: dict[str, str] = {}
    for _, stratum in groups.groupby(["label", "body_part"], sort=True):
        ids = rng.permutation(stratum.index.to_numpy())
        n = len(ids)
        n_test, n_val = round(n * test_fraction), round(n * val_fraction)
        if n_test + n_val >= n:
            n_test = n_val = 0
        split_of.update(dict.fromkeys(ids[:n_test], "test"))
        split_of.update(dict.fromkeys(ids[n_test : n_test + n_val], "val"))
        split_of.update(dict.fromkeys(ids[n_test + n_val :], "train"))
    out.loc[out["usable"], "split"] = usable["group"].map(split_of).fillna("")
    return out.astype({"split": "str"})


def _balance(groups: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    by_label = [groups[groups["label"] == label] for label in (0, 1)]
    n = min(len(part) for part in by_label)
    keep = [part.iloc[np.sort(rng.choice(len(part), size=n, replace=False))] for part in by_label]
    return pd.concat(keep).sort_index()


def by_label(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame["label"].value_counts()
    return {"non_fractured": int(counts.get(0, 0)), "fractured": int(counts.get(1, 0)), "total": len(frame)}
