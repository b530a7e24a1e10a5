"""What a run measures besides its loss, each evaluator at its own cadence (see common.py)."""
