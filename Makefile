# The README's two commands. Both (re)build .venv: torch is pinned and installed first so that pip
# never resolves an unpinned torch (which would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean readme data

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m optfit demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

data: $(STAMP)
	$(PY) -m optfit data prepare

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

readme: $(STAMP)
	$(PY) -c "import pathlib, optfit.registry as r; p = pathlib.Path('README.md'); p.write_text(r.splice_readme(p.read_text()))"
