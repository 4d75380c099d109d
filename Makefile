# Set-up, tests, demo and benchmarks. Every target sets up the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test,oracle,web,docs,ray,interop

.PHONY: setup test demo bench docs clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@echo "Installing saesteer with extras [$(EXTRAS)] into $(VENV) (torch CPU and friends: a few minutes the first time)"
	$(BIN)/pip install --progress-bar on --upgrade pip
	$(BIN)/pip install --progress-bar on -c constraints.txt -e ".[$(EXTRAS)]"
	@# nnsight (via dictionary-learning, interop oracle only) pulls a torchvision built for another torch,
	@# whose import fails; transformers then breaks where it probes for it. saesteer never needs it.
	$(BIN)/pip uninstall -y -q torchvision 2>/dev/null || true
	touch $@

setup: $(BIN)/.installed

test: setup
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q

demo: setup
	$(BIN)/saesteer demo $(DEMO_ARGS)

bench: setup
	$(BIN)/python benchmarks/sweep_speed.py $(BENCH_ARGS)

docs: setup
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site .pytest_cache
