"""Runs: one experiment (run.py), or a group of them trained in one pass (group.py)."""

from linreg_lab.experiment.run import DataSource, Outcome, StopEarly, run_experiment

__all__ = ["DataSource", "Outcome", "StopEarly", "run_experiment"]
