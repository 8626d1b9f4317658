"""What a person sees: a tiny real study's console, a line per trial and epoch and none of Ray's chatter
(--verbose brings Ray's back: test_study_names).

The jobs run as a user runs them (fresh interpreter, stdout and stderr read together); the study
dirs they leave say how many epochs each trial really trained, which the console must match.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOX = re.compile("[╭╮╰╯│├┤─]")
RAY_CHATTER = (
    "Execution plan of Dataset",
    "Starting execution of Dataset",
    "Trial status:",
    "Current best trial",
    "PreemptionWatcher",
    "RayDeprecationWarning",
    "Reporting training result",
    "Setting up process group",
)
CLOCK = r"^\d\d:\d\d:\d\d "
TIME = r"(\d+ s|\d+m\d\ds)"
START = re.compile(CLOCK + r"(trial_\d{3}) started: dropout=\S+ l2=\S+ lr_head=\S+ lr_backbone=\S+$")
EPOCH = re.compile(
    CLOCK + r"(trial_\d{3}) epoch (\d+)/(\d+)  loss \d+\.\d{4}  val AUROC \d\.\d{4}  "
    rf"sens \d\.\d{{3}} spec \d\.\d{{3}}  \d+\.\d img/s  {TIME}/epoch(  ETA {TIME})?$"
)
END = re.compile(CLOCK + r"(trial_\d{3}) (finished|stopped by ASHA after) (\d+)/(\d+) epochs")


def _epochs_trained(tune_dir: Path) -> dict[str, int]:
    """{trial name: epochs in its result.json}, from the trial dirs (trial_003_<trial id>)."""
    return {
        path.name.rsplit("_", 1)[0]: len((path / "result.json").read_text().splitlines())
        for path in tune_dir.glob("trial_*")
        if path.is_dir()
    }


def test_a_study_prints_a_line_per_trial_and_epoch_and_none_of_rays_chatter(
    tmp_path, synthetic_root, run_job, tiny_args
):
    proc = run_job("tune.py", *tiny_args(synthetic_root, tmp_path / "runs", epochs=2, trials=2))
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    lines = console.splitlines()
    assert not [line for line in lines if BOX.search(line)], console[-4000:]
    assert not [line for line in lines if any(chatter in line for chatter in RAY_CHATTER)], console[-4000:]
    # No 1,000-character "Current best trial ... params={'config': {...}}"; a Python warning prints its message whole.
    assert max(len(line) for line in lines if "Warning: " not in line) < 300, console[-4000:]

    trained = _epochs_trained(tmp_path / "runs" / "demo" / "tune")
    assert sorted(trained) == ["trial_001", "trial_002"] and trained["trial_001"] == 2  # no rival at its rung yet
    started = [START.match(line).group(1) for line in lines if START.match(line)]
    assert started == ["trial_001", "trial_002"], console[-4000:]
    epochs = [EPOCH.match(line).groups()[:3] for line in lines if EPOCH.match(line)]
    for name, count in trained.items():
        assert [(e, n) for t, e, n in epochs if t == name] == [(str(k), "2") for k in range(1, count + 1)], console
    ended = {END.match(line).group(1): END.match(line).groups()[1:3] for line in lines if END.match(line)}
    assert ended == {
        name: ("finished" if count == 2 else "stopped by ASHA after", str(count)) for name, count in trained.items()
    }, console[-4000:]
    assert "=== best trial ===" in proc.stdout and "now @champion" in proc.stdout

    # The printed resume command alone continues the study, with the config stored beside it.
    resume = re.search(r"resume: (python jobs/tune.py --resume \S+)\)", proc.stdout).group(1).split()[2:]
    again = run_job("tune.py", *resume)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"resuming study demo in {tmp_path / 'runs' / 'demo' / 'tune'}" in again.stderr
    assert "registered model version 2" in again.stdout and not BOX.search(again.stdout + again.stderr)
    stored = yaml.safe_load((tmp_path / "runs" / "demo" / "config.yaml").read_text())
    assert stored["data"]["root"] == str(synthetic_root) and stored["search"]["num_trials"] == 2
