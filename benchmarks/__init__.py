"""Benchmarks of clinrag against the evaluation data in ../shared/eval (see each script)."""
