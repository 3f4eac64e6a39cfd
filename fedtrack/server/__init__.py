"""Runs in the FL server's job process: the metric-leak guard (guard.py), every job's true end state
(outcome.py) and the round for `make wait` (progress.py). Round numbers and one outcome word, never a metric."""
