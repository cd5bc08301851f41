"""Audit analyses: plain functions (examples, model, config, progress) -> findings."""
