"""procguard's benchmark suite: every speed and cost figure beside its baseline, in one command.

Run from the repository root: `.venv/bin/python -m bench` (see bench/README.md). Not an installed package.
"""
