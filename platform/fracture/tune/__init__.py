"""The search: Tune domains from search.space, the Tuner (Optuna + ASHA), the trials table, the console."""
