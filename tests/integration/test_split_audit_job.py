"""jobs/train.py on an edited manifest that puts a byte-identical copy in another split than its source.

Refused before Ray starts with one `error:` line naming the image (exit 2); with
data.allow_leaky_split=true it trains, and the study's MLflow parent run records the override.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from procs import tiny_job_args

from fracture.core.config import load
from fracture.data import pipeline, synthetic
from fracture.track import store, tags

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COPY = "IMG0009999.jpg"


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """(data root, edited manifest): the copy's row made usable and moved out of its source's split."""
    tmp = tmp_path_factory.mktemp("leaky")
    root = synthetic.generate(tmp / "data", n=96, seed=0, min_size=40, max_size=56)
    source = sorted((root / "images" / "Non_fractured").glob("*.jpg"))[0]
    shutil.copy(source, source.with_name(COPY))
    lines = (root / "dataset.csv").read_text().splitlines()
    row = next(line for line in lines if line.startswith(source.name))
    (root / "dataset.csv").write_text("\n".join([*lines, row.replace(source.name, COPY)]) + "\n")
    cfg = load(ROOT / "jobs" / "studies" / "demo.yaml", [f"data.root={root}"])
    path = tmp / "manifest.parquet"
    frame = pipeline.build_manifest(cfg, root, path, progress=False)
    kept = frame.set_index("image_id").at[source.name, "split"]
    copy = frame["image_id"] == COPY
    frame.loc[copy, ["usable", "split"]] = [True, "test" if kept != "test" else "train"]
    # Keep the provenance: the edit must pass ensure_manifest's checks and meet the audit alone.
    metadata = pq.read_schema(path).metadata
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(metadata), path)
    return root, path


def _args(root: Path, path: Path, storage: Path, *extra: str) -> list[str]:
    return tiny_job_args(root, storage, f"data.manifest={path}", *extra)


def test_a_duplicate_in_two_splits_is_one_error_line(run_job, leaky, tmp_path):
    proc = run_job("train.py", *_args(*leaky, tmp_path / "runs"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and COPY in errors[0] and "byte-identical" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Started a local Ray instance" not in proc.stderr


def test_allow_leaky_split_trains_and_tags_the_parent_run(run_job, leaky, tmp_path):
    args = _args(*leaky, tmp_path / "runs", "data.allow_leaky_split=true")
    proc = run_job("train.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "allow_leaky_split=true: running anyway" in proc.stderr
    cfg = load(ROOT / "jobs" / "studies" / "demo.yaml", args)
    client = mlflow.MlflowClient(tracking_uri=store.tracking_uri(cfg))
    experiment = client.get_experiment_by_name("test")
    parents = [r for r in client.search_runs([experiment.experiment_id]) if tags.SPLIT_AUDIT_TAG in r.data.tags]
    assert len(parents) == 1
    tag = parents[0].data.tags[tags.SPLIT_AUDIT_TAG]
    assert tag.startswith("overridden: ") and "exact_duplicate" in tag, tag
    record = client.download_artifacts(parents[0].info.run_id, "data/split_audit.json", str(tmp_path))
    assert COPY in Path(record).read_text()  # the findings, ids included
