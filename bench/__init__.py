"""The benchmark suite: `python -m bench [--quick]` (see bench/README.md). Importing it starts nothing."""
