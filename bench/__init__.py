"""`make bench`: tunewright against the tools a user would otherwise pick (see bench/run.py)."""
