"""The wheel (pyproject.toml): what it holds, and that the installed package finds its Spark defaults, training
defaults and the bundled MNIST without the checkout. Built with this environment's setuptools, offline."""
import configparser
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile

import pytest

import mnist_lenet_spark
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                                reason="building the wheel offline needs setuptools here (the dev extra has it)")

CONF = ["spark-defaults.conf", "log4j2.properties", "training.json"]
MNIST = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]
COMMANDS = {"mnist-lenet-train": "mnist_lenet_spark.jobs.commands:train",
            "mnist-lenet-predict": "mnist_lenet_spark.jobs.commands:predict",
            "mnist-lenet-experiment": "mnist_lenet_spark.jobs.commands:experiment"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of the files a source distribution holds (so the build leaves nothing in the
    checkout and does not race another build there)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "NOTICE", "requirements-executor.txt"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "conf", src / "conf")
    shutil.copytree(ROOT / "data" / "mnist", src / "data" / "mnist")
    shutil.copytree(ROOT / "mnist_lenet_spark", src / "mnist_lenet_spark",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [built] = out.glob("*.whl")
    return built


def test_setup_py_defers_to_pyproject_toml():
    """Tools that look for setup.py find one, and it gives pyproject.toml's name and version."""
    proc = subprocess.run([sys.executable, "setup.py", "--name", "--version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["mnist_lenet_spark", mnist_lenet_spark.__version__]


def test_wheel_holds_package_conf_mnist_commands_and_licenses(wheel):
    version = mnist_lenet_spark.__version__
    assert wheel.name == f"mnist_lenet_spark-{version}-py3-none-any.whl"
    info = f"mnist_lenet_spark-{version}.dist-info"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in CONF:
            assert z.read(f"mnist_lenet_spark/_bundled/conf/{name}") == (ROOT / "conf" / name).read_bytes()
        for name in MNIST:
            assert z.getinfo(f"mnist_lenet_spark/_bundled/data/mnist/{name}").file_size == \
                (ROOT / "data" / "mnist" / name).stat().st_size
        modules = {str(p.relative_to(ROOT)) for p in (ROOT / "mnist_lenet_spark").rglob("*.py")
                   if "__pycache__" not in p.parts}
        assert modules <= names, f"modules missing from the wheel (pyproject.toml's packages): {modules - names}"
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read(f"{info}/entry_points.txt").decode())
        assert dict(entry_points["console_scripts"]) == COMMANDS
        assert z.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        assert b"Yann LeCun" in z.read(f"{info}/licenses/NOTICE")
        metadata = z.read(f"{info}/METADATA").decode()
    assert f"\nVersion: {version}\n" in metadata and "\nLicense-Expression: Apache-2.0\n" in metadata
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith(("torch", "keras", "pytest", "moto", "mlflow")) for r in runtime), runtime
    assert any(r.startswith("mlflow") and 'extra == "mlflow"' in r for r in requires)
    executor = [line.strip() for line in (ROOT / "requirements-executor.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    from packaging.requirements import Requirement
    declared = {str(Requirement(r)) for r in runtime}
    assert {str(Requirement(r)) for r in executor} <= declared, (executor, runtime)  # the two lists in step


def test_installed_package_finds_conf_and_mnist_without_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = """if True:
        import json, sys
        import mnist_lenet_spark
        from mnist_lenet_spark import data, files, session
        from mnist_lenet_spark.jobs import train_lenet
        run = train_lenet.train_run(train_lenet.parse_args([]))
        labels = data.read_idx_labels(data.BUNDLED_DIR / "t10k-labels-idx1-ubyte.gz")
        print(json.dumps({
            "package": mnist_lenet_spark.__file__, "spark_defaults": str(session.SPARK_DEFAULTS),
            "log4j": str(session.LOG4J), "mnist": str(data.BUNDLED_DIR), "training": str(train_lenet.TRAINING_CONF),
            "settings": session.read_spark_conf(session.SPARK_DEFAULTS), "validate_every": run.config.validate_every,
            "test_labels": len(labels)}))
    """
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env={**env, "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    bundled = site / "mnist_lenet_spark" / "_bundled"
    assert found["package"].startswith(str(site))  # the unpacked wheel, not the checkout's package
    assert found["spark_defaults"] == str(bundled / "conf" / "spark-defaults.conf")
    assert found["log4j"] == str(bundled / "conf" / "log4j2.properties")
    assert found["training"] == str(bundled / "conf" / "training.json")
    assert found["mnist"] == str(bundled / "data" / "mnist")
    assert found["settings"]["spark.shuffle.reduceLocality.enabled"] == "false"
    assert found["validate_every"] == json.loads((ROOT / "conf" / "training.json").read_text())["validate_every"]
    assert found["test_labels"] == 10000


def test_a_command_raises_its_failing_status_and_returns_none_on_success(monkeypatch):
    """A Databricks wheel task ignores a returned status: a failing job must raise (SystemExit with it)."""
    from mnist_lenet_spark.jobs import commands, predict
    with pytest.raises(SystemExit) as e:  # a bad flag: argparse's own exit
        commands.train(["--workers", "0"])
    assert e.value.code == 2
    calls = []
    monkeypatch.setattr(predict, "main", lambda argv: calls.append(argv) or (2 if argv == ["bad"] else 0))
    with pytest.raises(SystemExit) as e:  # a job's returned status
        commands.predict(["bad"])
    assert e.value.code == 2
    assert commands.predict(["good"]) is None and calls == [["bad"], ["good"]]
    with pytest.raises(SystemExit) as e:
        commands.experiment(["--help"])
    assert e.value.code == 0
