"""tunnelctl's scale benchmark (issue 6): `.venv/bin/python -m bench` (see bench/run.py)."""
