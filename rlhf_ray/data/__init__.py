"""Datasets and prompt streams: embedded IMDB, user files (jsonl/parquet/csv/datasets dirs), chat
prompts, and the resumable prompt stream the driver draws from.

May import: errors, store, config."""
