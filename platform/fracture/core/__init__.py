"""What every stage shares, importing nothing above it: config, errors, storage, metrics, redaction."""
