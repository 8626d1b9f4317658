"""The registered model's MLflow flavour: mlflow.pytorch's files with this module as the pyfunc loader.

The registered model loads two ways: `mlflow.pytorch.load_model` gives the torch module (logits,
any batch size), `mlflow.pyfunc.load_model` gives P(fracture) and the decision at the model's
threshold (this module is its loader).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from fracture.core.config import Config
from fracture.track import registry, store


def log_model(uri: str, cfg: Config, net, summary: dict) -> str:
    """Log the model on its trial run and register it; returns the new version.

    One MLflow model, two ways to load it: `mlflow.pytorch.load_model` gives the torch module
    (logits, any batch size) and `mlflow.pyfunc.load_model` gives P(fracture) and the decision at
    the version's threshold.
    """
    import mlflow
    import numpy as np
    from mlflow.models import Model, infer_signature

    size, run_id = summary["image_size"], summary["run_id"]
    # Batch 2, not 1: MLflow 3 saves a torch.export graph traced on this example, and torch.export
    # pins a size-1 dimension to a constant, after which the graph refuses any other batch size.
    # Quarter steps keep the example's JSON copies small at 224 px.
    example = (np.random.default_rng(0).integers(0, 5, (2, 3, size, size)) / 4).astype(np.float32)
    signature = infer_signature(example, _Scorer(net, summary["threshold"]).predict(example))
    client = store.client(uri)
    ended = store.retry(client.get_run, run_id).info
    # The logged model belongs to the active run's experiment (else to experiment 0 in ./mlruns).
    with store.fluent(uri), mlflow.start_run(run_id=run_id):
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=_FLAVOR,
            flavor_name="mlflow.pytorch",
            registered_model_name=cfg.tracking.model_name,
            tags=registry.version_tags(summary),
            metadata={"threshold": summary["threshold"], "image_size": size},
            pytorch_model=net,
            threshold=summary["threshold"],
            signature=signature,
            input_example=example,
            serialization_format="pt2",
        )
    # Reopening the run ended it anew: give back the trial's own end, or the UI shows its duration to now.
    store.retry(client.set_terminated, run_id, ended.status, end_time=ended.end_time)
    return str(info.registered_model_version)


def _save_model(path, mlflow_model, *, pytorch_model, threshold: float, **kwargs) -> None:
    """Model.log's flavor: mlflow.pytorch's files, with this module as the pyfunc loader.

    mlflow.pytorch's own pyfunc returns raw logits as an unnamed column; a user scoring X-rays
    wants the probability and the decision at the threshold the model was validated with.
    """
    import mlflow.pytorch
    from mlflow import pyfunc
    from mlflow.utils.environment import _CONDA_ENV_FILE_NAME, _PYTHON_ENV_FILE_NAME

    # Explicit requirements: inferring them loads the model once more in a subprocess (~30 s).
    mlflow.pytorch.save_model(
        pytorch_model,
        path,
        mlflow_model=mlflow_model,
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        **kwargs,
    )
    pyfunc.add_to_model(
        mlflow_model,
        loader_module=__name__,
        data="data",
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        model_config={"threshold": float(threshold)},
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))


_FLAVOR = SimpleNamespace(save_model=_save_model)


class _Scorer:
    """The pyfunc side of a registered model: float32 images (N, 3, S, S) in [0, 1] -> DataFrame."""

    def __init__(self, net, threshold: float):
        self.net, self.threshold = net, float(threshold)

    def predict(self, data, params: dict | None = None):
        import numpy as np
        import pandas as pd
        import torch

        with torch.no_grad():
            logits = self.net(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)))
        probability = torch.sigmoid(logits).reshape(-1).double().numpy()
        return pd.DataFrame({"probability": probability, "fracture": probability >= self.threshold})


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> _Scorer:
    """mlflow.pyfunc.load_model's entry point: this module is the registered model's loader_module.

    `model_config={"threshold": t}` at load time scores at another operating point.
    """
    import mlflow.pytorch

    net = mlflow.pytorch.load_model(str(Path(data_path).parent))
    return _Scorer(net, (model_config or {})["threshold"])
