"""Operator commands beside the pipeline: tables, quality, privacy, maintenance, packaging, bench, demo data."""
