"""Cohorts, simulated cohorts, training, evaluation and reports."""
