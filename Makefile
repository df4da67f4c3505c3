# The two commands that matter: `make demo` and `make test`. Each sets up what it needs on a
# fresh machine: the venv, the package, Debian's prometheus and alertmanager, and (for tests) chromium.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck unit integration bench tools browser proto clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first, pinned: 2.13.0 is the CPU build on this disk; the range in the shadow extra
	@# then installs nothing more (an unpinned torch would pull a multi-GB CUDA build).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,demo,shadow,confluent,report]'
	@touch $(STAMP)

# The demo runs prometheus and prometheus-alertmanager; the tests also promtool and amtool.
tools:
	@(for t in prometheus prometheus-alertmanager promtool amtool; do command -v $$t >/dev/null || exit 1; done) || { \
		echo "installing Debian's prometheus and prometheus-alertmanager (promtool, amtool)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			prometheus prometheus-alertmanager >/dev/null; }

# chromium: the replay report page is tested in a real headless browser.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium (the replay --html page's test)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			chromium >/dev/null; }

# Without Prometheus and Alertmanager (no root to install them, say) the demo still runs, and says
# what it skipped and why.
demo: $(STAMP)
	@$(MAKE) --no-print-directory tools || echo "make demo: could not install prometheus and prometheus-alertmanager"
	$(BIN)/inferwatch demo

lint: $(STAMP)
	$(BIN)/ruff check daemon detectors tests bench
	$(BIN)/ruff format --check daemon detectors tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) tools browser
	$(BIN)/pytest tests/integration

test: $(STAMP) tools browser lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/pipeline_throughput.py
	$(BIN)/python bench/replay_throughput.py
	$(BIN)/python bench/replay_html.py
	$(BIN)/python bench/formats.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/kafka_e2e.py
	$(BIN)/python bench/scrape.py
	$(BIN)/python bench/calibration.py
	$(BIN)/python bench/detection.py
	$(BIN)/python bench/canary.py
	$(BIN)/python bench/shadow.py
	$(BIN)/python bench/alerting.py
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/soak.py

# The seldon format's protobuf code, from the .proto written in this repo (a unit test checks it).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Idaemon/ingest/formats --python_out=daemon/ingest/formats \
		--pyi_out=daemon/ingest/formats daemon/ingest/formats/oip.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/results
