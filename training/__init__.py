"""Fitting and evaluation loops, reports: the orchestration between datasets and models."""
