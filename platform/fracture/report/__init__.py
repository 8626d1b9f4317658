"""A registered version's model card: its facts (MLflow lineage, a fresh scoring) and their rendering."""
