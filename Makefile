# `make run` trains LeNet on the bundled MNIST in Spark local mode; `make test` runs the tests.
# Both create .venv (with the python3 on PATH) and install everything the first time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
TESTS ?= tests
PACK_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v $(PYTHON))
PACKED_ENV := dist/mnist_lenet_spark_env.tar.gz

.PHONY: run test bench experiment dist wheel pack check-java clean

# Two stamps: `make run` needs the runtime dependencies only (pip install -e .); `make test` adds the dev extra
# (PyTorch, Keras, moto, nbclient, mlflow ...). Each is redone when pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml requirements-executor.txt
	@$(PYTHON) scripts/check_python.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-run
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PY) -m pip install -q -e ".[dev,bench]"
	@touch $@

check-java:
	@$(PYTHON) scripts/check_java.py

run: $(VENV)/.installed-run check-java
	$(PY) jobs/train_lenet.py --conf conf/spark-defaults.conf $(ARGS)

test: $(VENV)/.installed-dev check-java dist $(PACKED_ENV)
	$(PY) -m pytest $(TESTS) --durations=20 $(ARGS)

bench: $(VENV)/.installed-bench check-java
	$(PY) benchmarks/kernel.py
	$(PY) benchmarks/vgg.py
	$(PY) benchmarks/spark_step.py
	$(PY) benchmarks/warmup.py
	$(PY) benchmarks/peers.py
	$(PY) benchmarks/one_job.py
	$(PY) benchmarks/coordinator.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/scaling.py --model resnet --batches 64,256
	$(PY) benchmarks/backup.py
	$(PY) benchmarks/dataframe.py
	$(PY) benchmarks/cluster.py
	$(PY) benchmarks/runaway.py
	$(PY) benchmarks/scale.py --short
	$(PY) benchmarks/soak.py
	$(PY) benchmarks/driver_heap.py
	$(PY) benchmarks/driver_heap.py --scale --configs backup
	$(PY) benchmarks/accuracy.py
	$(PY) benchmarks/accuracy.py --model resnet

experiment: $(VENV)/.installed-run check-java
	$(PY) jobs/straggler_experiment.py --steps 20 --backup 0,1 --out-dir out/straggler $(ARGS)

dist: $(VENV)/.installed-run
	$(PY) -c 'from mnist_lenet_spark.session import build_zip; print(build_zip("dist/mnist_lenet_spark.zip"))'

# The wheel (package, conf/ and data/mnist/ as package data, the mnist-lenet-* commands) in dist/: what a
# cluster or a Databricks "Python wheel task" installs (pip install dist/mnist_lenet_spark-*.whl).
wheel: $(VENV)/.installed-run
	$(PY) -m pip wheel -q --no-deps -w dist .

# The executors' Python environment for a cluster whose hosts have only a python3 (README, "Running on a
# cluster"): a venv of PACK_PYTHON (the interpreter the executors have, at the same path) holding the package
# and requirements-executor.txt, packed by venv-pack for spark-submit --archives.
pack: dist $(PACKED_ENV)

$(PACKED_ENV): $(VENV)/.installed-dev requirements-executor.txt $(shell find mnist_lenet_spark -name '*.py')
	rm -rf build/pack-venv
	$(PACK_PYTHON) -m venv build/pack-venv
	build/pack-venv/bin/python -m pip install -q --upgrade pip
	build/pack-venv/bin/python -m pip install -q -r requirements-executor.txt
	build/pack-venv/bin/python -m pip install -q --no-deps .
	@mkdir -p dist
	$(VENV)/bin/venv-pack -p build/pack-venv -o $@.tmp.tar.gz --force > /dev/null
	mv $@.tmp.tar.gz $@
	rm -rf build/pack-venv

clean:
	rm -rf $(VENV) dist build out *.egg-info
