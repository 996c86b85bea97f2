# Lepton Lab: one-command entry points. POSIX make; `make PYTHON=python3.12 venv` to pick Python.
#
#   make run     install (once) and execute templates/quickstart.ipynb on the embedded Ray
#   make test    layering and lint checks, the sidebar's jest tests, then unit + integration
#                tests (GPU tests skip where there is no GPU)
#   make lint    only the checks: lint-imports (docs/architecture.md's layers) and ruff
#   make lab     JupyterLab with the Lepton kernel and magics
#   make bench   dispatch benchmark (results belong in docs/benchmarks.md)
#   make labext  rebuild the JupyterLab sidebar (labextension/, needs Node.js) after editing it

PYTHON ?= python3.11
VENV = .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
# The built sidebar; rebuilt when its TypeScript, styles, schema or packages change.
LABEXT = lepton_lab/labextension/package.json
LABEXT_SRC = labextension/package.json labextension/yarn.lock labextension/schema/plugin.json \
	$(wildcard labextension/src/*.ts labextension/src/*/*.ts labextension/style/*)
# Pinned on purpose: installed before the project so that `torch>=...` in pyproject.toml is
# already satisfied. An unpinned torch resolves to a multi-GB CUDA build on Linux.
TORCH = torch==2.13.0

.PHONY: venv run test lint bench lab labext chromium clean

venv: $(STAMP)

# Re-runs only when pyproject.toml changes. An editable install skips pyproject's shared-data,
# so the "Python 3 (Lepton)" kernel spec is installed into the venv by hand, and so are the
# sidebar (a link to lepton_lab/labextension, built below) and the server extension's config.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install '$(TORCH)'
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/jupyter kernelspec install --sys-prefix --name lepton kernels/lepton
	$(MAKE) labext
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/jupyter labextension develop --overwrite .
	mkdir -p $(VENV)/etc/jupyter/jupyter_server_config.d
	cp jupyter-config/jupyter_server_config.d/lepton_lab.json \
		$(VENV)/etc/jupyter/jupyter_server_config.d/lepton_lab.json
	touch $(STAMP)

# jlpm is JupyterLab's pinned yarn (in the venv); --immutable keeps yarn.lock as committed.
labext: $(LABEXT)

$(LABEXT): $(LABEXT_SRC)
	test -x $(BIN)/jlpm || { echo "make venv first"; exit 1; }
	cd labextension && PATH="$(CURDIR)/$(BIN):$$PATH" jlpm install --immutable
	cd labextension && PATH="$(CURDIR)/$(BIN):$$PATH" jlpm build
	touch $(LABEXT)

run: venv
	$(BIN)/lepton run templates/quickstart.ipynb

test: lint $(LABEXT) chromium
	cd labextension && PATH="$(CURDIR)/$(BIN):$$PATH" jlpm test --silent
	$(BIN)/python -m pytest tests -q --durations=20

# The layers (adapters -> features -> remote -> ground) are the contracts in pyproject.toml.
lint: venv
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check lepton_lab bench tests

# The browser tests drive the system Chromium (never `playwright install`). On a fresh Debian
# machine where we are root, install it; elsewhere the browser tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x "$${LEPTON_CHROMIUM:-/nonexistent}" || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      apt-get install -y chromium >/dev/null || echo "make: Chromium could not be installed; the browser tests will skip"; \
	    else echo "make: no Chromium (apt-get install -y chromium); the browser tests will skip"; fi; }

bench: venv
	$(BIN)/python bench/dispatch.py

lab: venv $(LABEXT)
	$(BIN)/jupyter lab

clean:
	rm -rf $(VENV) build dist .pytest_cache *.egg-info lepton_lab/labextension \
		labextension/node_modules labextension/lib labextension/tsconfig.tsbuildinfo
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
