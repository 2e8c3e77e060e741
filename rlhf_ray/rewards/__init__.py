"""Reward sources: the sentiment classifier (and scalar reward models), their loading and
scoring.

May import: errors, batch, process, store, config, data, models."""
