# The two commands of README.md: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack.sh

.PHONY: help venv deps stack-up stack-down demo demo-stop test unit lint bench bench-scale soak dashboards clean

help:
	@echo "make demo       install, start Kafka, Redis and Prometheus, a worker and the simulator"
	@echo "make demo-stop  stop the demo's worker, simulator and stack"
	@echo "make test       install, start the stack, lint, run all tests, stop the stack"
	@echo "make unit       tests that need no stack"
	@echo "make lint       ruff and mypy"
	@echo "make bench      fold speed, event-to-API latency, worker throughput vs bare consumers"
	@echo "make bench-scale a million customers on RocksDB; one worker against two"
	@echo "make soak       the slow fault tests: 20 join-then-leave rebalances, a 60 s broker outage"
	@echo "make dashboards regenerate deploy/grafana/dashboards/*.json from deploy/grafana/dashboards.py"

$(BIN)/journey: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/journey

deps:
	deploy/local/install-deps.sh

stack-up: deps
	$(STACK) up

stack-down:
	$(STACK) down

demo: venv stack-up
	deploy/local/demo.sh start

demo-stop:
	deploy/local/demo.sh stop
	$(STACK) down

test: deps venv
	deploy/local/run-tests.sh

unit: venv
	$(BIN)/pytest -m "not integration" tests

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# The last line is throughput.py's `ratio: X` (worker / bare parse-only consumer).
bench: venv stack-up
	$(BIN)/python bench/fold.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/stalls.py
	$(BIN)/python bench/throughput.py --mix uniform
	$(BIN)/python bench/throughput.py

# A million customers on RocksDB, and one worker against two (tens of minutes).
bench-scale: venv stack-up
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/workers.py

soak: venv stack-up
	bench/soak.sh

dashboards: venv
	$(BIN)/python deploy/grafana/dashboards.py

clean:
	$(STACK) clean
	rm -rf $(VENV) .journey-data
