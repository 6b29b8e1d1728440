# `make run` trains LeNet on the bundled MNIST in Spark local mode; `make test` runs the tests.
# Both create .venv (with the python3 on PATH) and install everything the first time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test bench experiment dist check-java clean

$(VENV)/.installed-dev: setup.py
	@$(PYTHON) scripts/check_python.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PY) -m pip install -q -e ".[dev,bench]"
	@touch $@

check-java:
	@$(PYTHON) scripts/check_java.py

run: $(VENV)/.installed-dev check-java
	$(PY) jobs/train_lenet.py --conf conf/spark-defaults.conf $(ARGS)

test: $(VENV)/.installed-dev check-java
	$(PY) -m pytest tests $(ARGS)

bench: $(VENV)/.installed-bench check-java
	$(PY) benchmarks/kernel.py
	$(PY) benchmarks/spark_step.py
	$(PY) benchmarks/warmup.py
	$(PY) benchmarks/peers.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/backup.py
	$(PY) benchmarks/dataframe.py
	$(PY) benchmarks/soak.py
	$(PY) benchmarks/accuracy.py

experiment: $(VENV)/.installed-dev check-java
	$(PY) jobs/straggler_experiment.py --steps 20 --backup 0,1 --out-dir out/straggler $(ARGS)

dist: $(VENV)/.installed-dev
	$(PY) -c 'from mnist_lenet_spark.session import build_zip; print(build_zip("dist/mnist_lenet_spark.zip"))'

clean:
	rm -rf $(VENV) dist build out *.egg-info
