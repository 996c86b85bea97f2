# Lepton Lab: one-command entry points. POSIX make; `make PYTHON=python3.12 venv` to pick Python.
#
#   make run     install (once) and execute templates/quickstart.ipynb on the embedded Ray
#   make test    unit + integration tests (GPU tests skip where there is no GPU)
#   make lab     JupyterLab with the Lepton kernel and magics
#   make bench   dispatch benchmark (results belong in docs/benchmarks.md)

PYTHON ?= python3.11
VENV = .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
# Pinned on purpose: installed before the project so that `torch>=...` in pyproject.toml is
# already satisfied. An unpinned torch resolves to a multi-GB CUDA build on Linux.
TORCH = torch==2.13.0

.PHONY: venv run test bench lab clean

venv: $(STAMP)

# Re-runs only when pyproject.toml changes. An editable install skips pyproject's shared-data,
# so the "Python 3 (Lepton)" kernel spec is installed into the venv by hand.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install '$(TORCH)'
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/jupyter kernelspec install --sys-prefix --name lepton kernels/lepton
	touch $(STAMP)

run: venv
	$(BIN)/lepton run templates/quickstart.ipynb

test: venv
	$(BIN)/python -m pytest tests -q

bench: venv
	$(BIN)/python bench/dispatch.py

lab: venv
	$(BIN)/jupyter lab

clean:
	rm -rf $(VENV) build dist .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
