"""Kept so that models registered before the track/ package (2026-12-08) still load with mlflow.pyfunc:
their MLmodel names `fracture.tracking` as the loader module. New versions name fracture.track.flavor."""

from fracture.track.flavor import _load_pyfunc  # noqa: F401
