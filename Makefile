# Fresh machine:  make demo   (install + generate with the bundled default model)
#                 make test   (install + run the tests)
# Also:           make test-quick    (the tests not marked slow)
#                 make install-clap  (the [clap] extra, keeping the installed torch)
PY ?= python3
PIP ?= $(PY) -m pip

# the tests run one torch thread each (tests/conftest.py), so pytest-xdist spreads them over the
# cores: one worker per core, at most 4 (PYTEST_WORKERS= runs them in one process)
PYTEST_WORKERS ?= -n auto --maxprocesses 4

.PHONY: install install-test install-clap demo test test-quick demo-models results results-runs

# torch route (.ci/install-torch.sh says which it took): auto keeps an installed torch 2.13.0, else
# takes the CUDA build when nvidia-smi sees a GPU, else the CPU-only build; TORCH=cpu|cuda|keep picks one
TORCH ?= auto

install:
	PY="$(PY)" PIP="$(PIP)" TORCH="$(TORCH)" bash .ci/install-torch.sh
	$(PIP) install -e .

install-test: install
	bash .ci/system-deps.sh
	$(PIP) install -e ".[test]"

demo: install
	presto generate "jazz trio" -o out.wav --steps 4 --seed 0 --force

test: install-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_WORKERS)

test-quick: install-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" $(PYTEST_WORKERS)

install-clap: install
	PY=$(PY) bash .ci/install-clap.sh

demo-models:
	bash benchmarks/train_demo_models.sh

# The published tables' settings on 2 CPU cores (about an hour); on a GPU raise --n (and give the
# layer grid a FAD with --grid-n 96). --n 96: more clips per seed set than the music embedder has
# dimensions (59), so its covariance is not singular (48 clips gave rank 47). FAD against latency:
# 96 clips per point (--latency-n).
RESULTS_ARGS ?= --n 96 --seeds 2 --jobs 2 --latency-n 96 --repeats 10

results:
	$(PY) benchmarks/results.py $(RESULTS_ARGS)
	$(PY) benchmarks/spectrograms.py

# Only the tables scored from training runs (layer grid, per-bin errors, FAD against latency), into
# README.md in place of the old ones; needs the chain's runs (RUNS=runs/demo, DATA=data/synth).
RUNS ?= runs/demo
DATA ?= data/synth
results-runs:
	$(PY) benchmarks/results.py --runs-only --runs $(RUNS) --grid $(RUNS)/grid --data $(DATA) --real $(DATA) --jobs 2 --latency-n 96
