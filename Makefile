# One task runner: CI runs `make test` (through .ci/run), users run `make run`.
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run test unit lint typecheck imports proto proto-check bench chaos clean env browser

env:
	@bash scripts/bootstrap.sh

## run: the main job on embedded defaults (local broker, Triton, Flink MiniCluster, GSS)
run: env
	$(BIN)/gss run

## test: everything CI checks: generated code drift, ruff, mypy, import layering, the whole test suite
test: env browser proto-check lint typecheck imports
	$(BIN)/pytest -q

## browser: Debian's chromium and chromedriver, for the explorer page's test
browser:
	@bash scripts/browser.sh

unit: env
	$(BIN)/pytest -q -m "not integration"

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: env
	$(BIN)/mypy

## imports: the layering of docs/architecture.md (contracts in pyproject.toml)
imports: env
	$(BIN)/lint-imports

## proto: regenerate contract/v1 from proto/
proto: env
	$(PY) scripts/gen_proto.py

proto-check: env
	$(PY) scripts/gen_proto.py --check

## bench: load data, measure, write bench/report.json
bench: env
	$(PY) -m bench.run

## chaos: the whole local stack under load with >= 50 kills and faults of every kind (kill -9 of GSS, a
## Flink Python worker, the whole job, a TaskManager of the standalone cluster, Triton; broker
## outages (a proxy cuts it off); a stalled subscriber), then the oracles; summary into bench/report.json
## (reliability). Options: CHAOS_ARGS="--faults 70 --seed 3 --duration 900 --kinds ...".
CHAOS_ARGS ?= --faults 75 --seed 1 --duration 900
chaos: env
	$(PY) -m tests.chaos $(CHAOS_ARGS)

clean:
	rm -rf gss-data .pytest_cache .mypy_cache .ruff_cache
