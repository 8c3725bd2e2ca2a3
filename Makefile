# The README's commands, as targets.
.PHONY: setup run test lint bench docs

setup:
	python3 -m venv .venv
	.venv/bin/pip install torch==2.13.0 -e ".[dev]"

run:
	.venv/bin/gradest gaussian

test:
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check .

bench:
	.venv/bin/python benchmarks/bench_engine.py

docs:
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
