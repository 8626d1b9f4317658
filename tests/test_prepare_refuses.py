"""jobs/prepare.py refuses data nothing can train on, with one error line, and leaves no manifest behind."""

from __future__ import annotations

import pytest

from fracture.data import synthetic


def _header_only(tmp_path):
    root = synthetic.generate(tmp_path / "header-only", n=6, seed=0, min_size=32, max_size=40)
    csv = root / "dataset.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    return root, "6 orphan_file"


def _all_broken(tmp_path):
    root = synthetic.generate(tmp_path / "all-broken", n=8, seed=1, min_size=32, max_size=40)
    for image in root.rglob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    return root, "8 unreadable"


def _no_fractures(tmp_path):
    root = synthetic.generate(tmp_path / "no-fractures", n=30, seed=2, min_size=32, max_size=40)
    for image in (root / "images" / "Fractured").glob("*.jpg"):
        image.unlink()  # their rows stay in dataset.csv: held-back files, as FracAtlas has
    return root, "only non-fractured images"


@pytest.mark.parametrize("make", [_header_only, _all_broken, _no_fractures], ids=lambda f: f.__name__[1:])
def test_prepare_refuses_data_nothing_can_train_on(tmp_path, run_job, make):
    root, says = make(tmp_path)
    out = tmp_path / "manifest.parquet"
    proc = run_job("prepare.py", "--root", str(root), "--out", str(out), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()  # nothing for a later study to train on
    assert (tmp_path / "manifest.report.md").is_file() and "report.md" in errors[0]
