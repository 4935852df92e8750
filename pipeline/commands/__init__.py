"""One module per command, each a short chain over a `Job` (job.py): run, validate, estimate, and
status, report and metrics over an output folder."""
