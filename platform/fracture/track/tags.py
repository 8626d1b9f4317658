"""The names MLflow shows: run tags, artifact folders, the experiment kind, the UI's query.

Layout in MLflow: experiment `cfg.tracking.experiment` (tagged as custom model development, so the
UI opens on its runs); one parent run per study invocation, holding the searched space as params;
one child run per Tune trial (params = the sampled values, metrics per epoch, the full config as
an artifact); the registered checkpoint and its learning curves on its trial's run.
"""

from __future__ import annotations

TRIAL_TAG = "fracture.trial_id"
STUDY_TAG = "fracture.study"
STUDY_DIR_TAG = "fracture.study_dir"
SPLIT_AUDIT_TAG = "fracture.split_audit"
SELECTED_EPOCH_TAG = "fracture.selected_epoch"
SELECTED_AUC_TAG = "fracture.selected_val_auc"
REGISTERED_TAG = "fracture.registered_version"  # "<model name>/<version>"
REGISTERED_URI_TAG = "fracture.registered_model_uri"  # "models:/<model name>/<version>"
RUN_NOTE_TAG = "mlflow.note.content"  # what the UI shows as a run's description

CHECKPOINT_ARTIFACT = "checkpoint"
CURVES_FILE = "training_curves.png"  # the registered checkpoint's learning curves, on its trial run
STUDY_ARTIFACT = "study"  # the parent run's trials.csv and Optuna plots
MODEL_CARD_ARTIFACT = "model_card"  # folder on the version's source (trial) run
MODEL_CARD_TAG = "model_card"  # version tag: runs:/<run id>/model_card/<name>.html

# MLflow 3's UI opens an experiment without this tag on its GenAI overview, not on its runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CUSTOM_MODEL_KIND = "custom_model_development"
# MLflow 3.17's UI ignores that tag: its sidebar switch (saved in the browser, GenAI by default)
# decides, and this query parameter on a page's URL overrides it with "Model training".
UI_QUERY = "?workflowType=machine_learning"


def ui_route(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page, after the server's address, of an experiment's runs or of one run."""
    page = f"/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return page + UI_QUERY
