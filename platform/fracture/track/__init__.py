"""MLflow, the only package that imports it: store, study and trial runs, flavour, registration, lineage."""
