# Set-up is part of every target: a fresh machine needs only `make run` or `make test`.
PYTHON ?= python3
VENV ?= .venv
RUN_DIR ?= runs/default
PY := $(VENV)/bin/python
FASHIONCLF := $(VENV)/bin/fashionclf
STAMP := $(VENV)/.installed

.PHONY: run test test-fast fuzz setup setup-bench data bench bench-load bench-seeds clean

setup: $(STAMP)

# Reinstall when the project's dependencies change.
# PyTorch's wheel with its CUDA libraries takes about 6 GB in the venv; --no-cache-dir keeps pip
# from holding a second copy of what it downloads.
$(STAMP): pyproject.toml
	@test -x $(PY) || bash scripts/check-disk.sh 7 "$(dir $(abspath $(VENV)))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir -e ".[test,scale]"
	@touch $@

# Find or fetch the data; on Debian/Ubuntu, install dataset-fashion-mnist if allowed.
data: $(STAMP)
	@bash scripts/ensure-data.sh $(FASHIONCLF)

# Train and evaluate the strong recipe: the best model within a 10-minute budget (docs/results.md).
# train refuses a folder that holds a run, so a second `make run` writes runs/default-2, and so on.
run: data
	@out=$(RUN_DIR); n=2; while [ -e "$$out/config.json" ] || [ -e "$$out/model.pt" ]; do \
		out=$(RUN_DIR)-$$n; n=$$((n + 1)); done; \
	echo "$(FASHIONCLF) train --recipe strong --out $$out"; \
	$(FASHIONCLF) train --recipe strong --out "$$out"

# The test suite. Without the real data, chromium or PostgreSQL, the tests needing them are skipped (they fail
# under CI=true).
test: $(STAMP)
	@bash scripts/ensure-data.sh $(FASHIONCLF) >/dev/null || echo "warning: no Fashion-MNIST; integration tests will be skipped"
	@command -v chromium >/dev/null || bash scripts/apt-install.sh chromium || echo "warning: no chromium; the web page test will be skipped"
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || bash scripts/apt-install.sh postgresql || echo "warning: no PostgreSQL; its tune test will be skipped"
	$(PY) -m pytest -q

# The tests not marked slow (no training beyond a few steps, no server or browser), two at a
# time: about 1.5 minutes on 2 cores.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2

# The fuzz tests with many more examples than `make test` gives them (minutes, not seconds).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_fuzz.py

# The Keras reference program as a peer in `make bench` (tensorflow-cpu, about 600 MB).
setup-bench: $(STAMP)
	$(PY) -m pip install --quiet --no-cache-dir -e ".[test,scale,bench]"

# Keras peer (if installed), fast and strong recipes over 3 seeds, inference on both backends:
# about 40 minutes on 2 cores. Writes runs/bench/results.md and results.json.
bench: data
	$(PY) benchmarks/bench.py --out runs/bench

# The HTTP service under 1, 8 and 32 clients sending JPEGs, and batch tagging of a folder of
# JPEGs (about 2 minutes; needs a model: `make run` or `make bench` first).
LOAD_MODEL ?= $(firstword $(wildcard runs/bench/fast/seed-0/model.pt $(RUN_DIR)/model.pt))
bench-load: data
	$(PY) benchmarks/load.py $(LOAD_MODEL) --workers 2 --json runs/load.json

# Median of 3 seeds for both reference CNNs (about 20 minutes on 2 cores).
bench-seeds: data
	$(PY) benchmarks/seeds.py --out runs/seeds/one-block-cnn -- --model one-block-cnn --epochs 10 --batch-size 32
	$(PY) benchmarks/seeds.py --out runs/seeds/two-block-cnn -- --model two-block-cnn --epochs 10 --batch-size 32

clean:
	rm -rf $(VENV) runs .pytest_cache
