"""The pipeline stages, one module each: ingest, cleanse, gold features and segments, sync, and run."""
