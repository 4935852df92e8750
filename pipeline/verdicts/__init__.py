"""Whether a row is right, not only present: a verdict per row (judge.py), user checks
(checks.py) and the job's state from the verdicts' counts (state.py)."""
