"""tracking's process-wide MLflow state: a study must leave MLflow as it found it."""

from __future__ import annotations

import os

import mlflow

from fracture import tracking


def test_fluent_leaves_mlflow_following_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/from-env.db")
    study_uri = f"sqlite:///{tmp_path}/study.db"
    with tracking._fluent(study_uri):
        assert mlflow.get_tracking_uri() == study_uri and mlflow.get_registry_uri() == study_uri
    # Nothing pinned: a later change of environment (the next study, the next test) takes effect.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/later.db")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/later.db"
    assert mlflow.get_registry_uri() == f"sqlite:///{tmp_path}/later.db"
    assert "MLFLOW_REGISTRY_URI" not in os.environ
