# `make run` and `make test` work on a fresh clone: they create (or reuse) .venv,
# install pq with what it needs, then run the example server or the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKERS ?= 2

.PHONY: install run test chromium bench clean chaos

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[test,fast]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) manage.py -w $(WORKERS)

# pytest exits 5 when it collected no test: that is a failure here too.
test: $(STAMP) chromium
	$(PY) -m pytest -q -p no:cacheprovider tests

# The dashboard test drives a real headless browser: Debian's chromium, installed
# once where apt-get can (as root); elsewhere that test skips (fails under CI=true).
chromium:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the dashboard test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "chromium could not be installed: the dashboard browser test will skip"; \
	fi

# Peers go to their own virtualenv, benchmarks/.venv-peers, made by run.py itself.
# `make bench BENCH_ARGS="redis --jobs 5000 --out /tmp/bench.md"`: one suite; see benchmarks/README.md.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# The heavy reliability runs behind docs/reliability.md (tests/reliability runs fast versions):
# `make chaos CHAOS_ARGS="soak --brokers sqlite --out /tmp/chaos.md"`; see benchmarks/chaos.py.
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(PY) benchmarks/chaos.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
