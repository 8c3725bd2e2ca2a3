# The README's commands, as targets.
.PHONY: setup run test lint bench docs fuzz fuzz-cli

setup:
	python3 -m venv .venv
	.venv/bin/pip install torch==2.13.0 -e ".[dev]"

run:
	.venv/bin/gradest gaussian

test:
	.venv/bin/python -m pytest

# the property suite with many new cases each run (tests/conftest.py's "long" profile), shrinking
# failures to minimal ones and reporting them even where CI marks a property xfail; the counts of
# drawn, refused and checked cases print at the end
fuzz:
	HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -s --runxfail tests/test_properties.py

fuzz-cli:
	GRADEST_CLI_FUZZ=long .venv/bin/python -m pytest -s tests/test_cli_fuzz.py

lint:
	.venv/bin/ruff check .

bench:
	.venv/bin/python benchmarks/bench_engine.py

# the site into site/ (open site/index.html); warnings are errors, as in CI
docs:
	.venv/bin/sphinx-build -W --keep-going -b html docs site
