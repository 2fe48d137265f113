"""The directory `python -m cmp` puts first on PYTHONPATH (see sitecustomize.py)."""
