"""Rows out and the folder that holds them: rows.py makes the one output row (schema.py), formats.py
encodes parts (Parquet or a provider's lines), folder.py commits parts and holds the resume state
under one writer (lease.py), results.py assembles per-input result files."""
