# The two commands a new user needs: `make run` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)
EXTRAS ?= dev

.PHONY: run test bench experiment dist check-java clean

$(STAMP): setup.py
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.10 is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-* && touch $@

check-java:
	@$(PYTHON) scripts/check_java.py

run: $(STAMP) check-java
	$(PY) jobs/train_lenet.py --conf conf/spark-defaults.conf $(ARGS)

test: $(STAMP) check-java
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

bench: EXTRAS = dev,bench
bench: check-java
	@$(MAKE) --no-print-directory $(STAMP) EXTRAS=dev,bench
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) benchmarks/kernel.py

dist: $(STAMP)
	$(PY) scripts/build_zip.py dist/mnist_lenet_spark.zip

clean:
	rm -rf $(VENV) dist build *.egg-info
