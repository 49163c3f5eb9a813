# `make test` and `make suite` set themselves up: they create .venv with Python 3.12 and install
# requirements.txt into it the first time (and again whenever requirements.txt changes).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# The first Python 3.12+ found: python3.12 on the PATH, then pyenv's and the system's installs.
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 \
	/usr/bin/python3.12 python3.13 python3; do "$$p" -c 'import sys; assert sys.version_info >= (3, 12)' \
	2>/dev/null && { echo "$$p"; break; }; done)
DATA ?=
SUITE_OUT ?= runs
# FULL=1 (on a GPU): the full configurations instead of the quick CPU preset.
FULL ?=
# SEEDS=3: every experiment once per seed 0, 1, 2 (runs expN-seedS, paired seed by seed in the report).
SEEDS ?= 1
SEED_NUMBERS := $(shell seq 0 $$(($(SEEDS) - 1)))
SUITE_FLAGS := $(if $(FULL),,--quick) --overwrite --out $(SUITE_OUT) $(if $(DATA),--data $(DATA)) \
	$(if $(filter 1,$(SEEDS)),,--seeds $(shell seq -s, 0 $$(($(SEEDS) - 1))))
EXP1_RUNS := $(if $(filter 1,$(SEEDS)),$(SUITE_OUT)/exp1,$(foreach s,$(SEED_NUMBERS),$(SUITE_OUT)/exp1-seed$(s)))

.PHONY: test suite results setup data clean

setup: $(VENV)/.installed $(VENV)/.hw_eval_setup

$(VENV)/.installed: requirements.txt
	@test -n "$(PYTHON312)" || { echo "error: Python 3.12 or newer is needed: install python3.12 (apt, pyenv or uv) or pass PYTHON312=/path/to/python3.12" >&2; exit 2; }
	test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# hw_eval.py's mapper (AccelForge) renders mappings with graphviz's dot, and its SRAM model runs CACTI,
# whose shipped binary needs glibc 2.38 (Debian 12 and Ubuntu 22.04 lack it): hw_eval.py --setup rebuilds it.
# Redone after requirements.txt changes (a reinstalled hwcomponents-cacti brings the shipped binary back).
$(VENV)/.hw_eval_setup: $(VENV)/.installed
	@command -v dot >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { apt-get install -y -qq graphviz >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq graphviz >/dev/null; }; }; } \
		|| { echo "error: hw_eval.py needs graphviz's dot, and apt-get cannot install it here: install the graphviz package (sudo apt-get install graphviz), then run make again" >&2; exit 2; }
	$(PY) hw_eval.py --setup
	touch $@

# ruff first (pyproject.toml): its lint and the formatter's check take a second or two, and CI keeps the code clean.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests

# analyze.py writes report/analyses.json, which report.py (reading result files only) shows.
suite: setup
	$(PY) exp1.py $(SUITE_FLAGS)
	$(PY) exp2.py $(SUITE_FLAGS)
	$(PY) exp3.py $(SUITE_FLAGS)
	$(PY) exp4.py $(SUITE_FLAGS)
	$(PY) exp5.py $(SUITE_FLAGS)
	$(PY) exp6.py $(SUITE_FLAGS)
	$(PY) exp7.py $(SUITE_FLAGS)
	$(PY) exp8.py $(SUITE_FLAGS)
	$(PY) exp9.py $(SUITE_FLAGS)
	for run in $(EXP1_RUNS); do $(PY) ptq.py $$run $(if $(DATA),--data $(DATA)) || exit; done
	$(PY) hw_eval.py --runs $(SUITE_OUT)
	$(PY) analyze.py --runs $(SUITE_OUT) --out report $(if $(DATA),--data $(DATA))
	$(PY) report.py --runs $(SUITE_OUT) --out report

# docs/results.md and the README's results table, from the suite's runs and report (run after make suite).
results: $(VENV)/.installed
	$(PY) results.py --runs $(SUITE_OUT) --report report

data: setup
	$(PY) data_setup.py --scene builtin

clean:
	rm -rf $(VENV) runs hw_eval report
