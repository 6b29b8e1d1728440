"""Every shell command shown in README.md and docs/*.md is run as written by a test, or marked as needing a cluster
with the namespace-cluster test that covers it named; and the documents hold together: the README's first
commands, its length, every job flag in docs/cli.md, the benchmark commands quoted inline, relative links.
Reads files only: no Spark, no subprocess; runs in well under a second."""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
README_MAX_LINES = 250

#: The marker a command needing a real cluster carries on the comment line just above it, naming the
#: namespace-cluster (or standalone-cluster) test that runs it.
CLUSTER_MARK = re.compile(r"^#\s*needs a cluster:\s*(tests/[\w/]+\.py)::(\w+)\s*$")
CLUSTER_TEST_FILES = {"tests/test_netns_cluster.py", "tests/test_clusters.py"}

#: Each command shown in a fenced shell block (whitespace collapsed) -> (what runs it, how it runs it). "What"
#: is pytest node ids (tests/FILE.py::test_name) or a CI script (.ci/run). Where the test passes smaller sizes or
#: adds flags, the note says so. Keep this table short: prefer ```python snippets in the documents.
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "make run": (
        ("tests/test_job.py::test_run_writes_summary_metrics_and_model",),
        "`make run` runs `jobs/train_lenet.py --conf conf/spark-defaults.conf` (Makefile, checked below); the test "
        "runs that command with `--master local[2] --no-progress` and smaller sizes (`--limit-train 512 --max-steps "
        "4 --batch-size 32`)"),
    "make test": (
        (".ci/run",),
        "CI runs `make test` from scratch in fresh clones, as root (namespace cluster required) and as an "
        "ordinary user (.ci/as_ordinary_user)"),
    "make pack": (
        (".ci/run",),
        "`make test` depends on `dist` and the packed environment, the two prerequisites of `make pack` (Makefile, "
        "checked below)"),
    "pip install .": (
        (".ci/run", "tests/test_packaging.py::test_installed_package_finds_conf_and_mnist_without_the_checkout"),
        "`make test` builds the packed executor environment with `pip install -q --no-deps .` in a fresh venv "
        "(Makefile, checked below); the packaging test installs the wheel of the same sources away from the "
        "checkout and runs the package from it"),
    "python jobs/train_lenet.py --train data/mnist --save-model out/lenet-model": (
        ("tests/test_job.py::test_train_from_a_dataframe_source_save_the_model_and_predict_with_it",),
        "the test runs it with `--master local[2] --no-progress --conf conf/spark-defaults.conf`, smaller sizes "
        "(`--max-steps 3 --batch-size 16 --validate-every 0`) and its outputs in a temporary folder"),
    "python jobs/predict.py --model out/lenet-model --input data/mnist --output out/predictions.parquet --evaluate": (
        ("tests/test_job.py::test_train_from_a_dataframe_source_save_the_model_and_predict_with_it",),
        "the test runs it with `--master local[2]` on the model the command above saved, outputs in a temporary "
        "folder, and checks the accuracy and the confusion matrix it prints"),
    "python jobs/straggler_experiment.py --workers 2 --backup 0,1 --steps 4 --batch-size 16 --no-speculation "
    "--straggler-prob 0.5 --straggler-delay 0.3 --validate-every 2 --validation-size 100 --out-dir out/straggler": (
        ("tests/test_experiment.py::test_experiment_writes_json_and_plots",),
        "the test calls the job's main() in-process with exactly these flags, its --out-dir a temporary folder"),
}


def shell_commands(path: Path) -> list[tuple[int, str, tuple[str, str] | None]]:
    """(line number, command, cluster marker (file, test) or None) for every command in the fenced shell blocks of
    ``path``. Backslash continuations are joined; in ``console`` blocks only ``$ `` lines are commands."""
    out = []
    language = None  # inside a fence: its language; outside: None
    pending = None  # the command being continued with a backslash: [line number, text, marker]
    marker = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            language = (stripped[3:].strip().lower() or "text") if language is None else None
            pending = marker = None
            continue
        if language not in SHELL_LANGUAGES:
            continue
        if pending is not None:
            pending[1] += " " + stripped.rstrip("\\").strip()
            if not stripped.endswith("\\"):
                out.append((pending[0], " ".join(pending[1].split()), pending[2]))
                pending = None
            continue
        if not stripped:
            continue
        if stripped.startswith("#"):
            found = CLUSTER_MARK.match(stripped)
            if found:
                marker = (found.group(1), found.group(2))
            continue
        if language == "console":
            if not stripped.startswith("$ "):
                continue  # output
            stripped = stripped[2:].strip()
        text = stripped.rstrip("\\").strip()
        if stripped.endswith("\\"):
            pending = [number, text, marker]
        else:
            out.append((number, " ".join(text.split()), marker))
        marker = None
    return out


def all_commands():
    return [(path, number, command, mark) for path in DOCS for number, command, mark in shell_commands(path)]


def functions_in(path: Path) -> set[str]:
    """The names of the test functions defined at the top level of a test file (parsed, not imported)."""
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def missing_reference(reference: str) -> str | None:
    """Why ``reference`` (``tests/FILE.py::test_name`` or a script path) names nothing, or None if it exists."""
    file, _, name = reference.partition("::")
    path = ROOT / file
    if not path.is_file():
        return f"{file}: no such file"
    if name and name not in functions_in(path):
        return f"{file} has no test function {name}"
    return None


def test_every_shell_command_in_the_docs_is_run_by_a_test_or_marked_as_needing_a_cluster():
    unmapped, bad = [], []
    for path, number, command, mark in all_commands():
        where = f"{path.relative_to(ROOT)}:{number}: {command}"
        if mark is not None:
            file, name = mark
            if file not in CLUSTER_TEST_FILES:
                bad.append(f"{where}\n    marked as needing a cluster with {file}, not a cluster test file "
                           f"({', '.join(sorted(CLUSTER_TEST_FILES))})")
            elif (why := missing_reference(f"{file}::{name}")) is not None:
                bad.append(f"{where}\n    its '# needs a cluster' line names a test that does not exist: {why}")
        elif command not in COMMANDS:
            unmapped.append(where)
    message = []
    if unmapped:
        message.append("Commands in the docs that no test runs. Map each in tests/test_docs.py's COMMANDS to the "
                       "tests that run it as written, or put '# needs a cluster: tests/test_netns_cluster.py::"
                       "test_name' on the line above it (or show it as a ```python snippet):\n  "
                       + "\n  ".join(unmapped))
    if bad:
        message.append("Bad cluster markers:\n  " + "\n  ".join(bad))
    assert not message, "\n\n".join(message)


def test_the_commands_table_names_tests_that_exist_and_only_commands_the_docs_show():
    shown = {command for _, _, command, _ in all_commands()}
    problems = [f"{command}: {why}" for command, (references, _) in COMMANDS.items() for reference in references
                if (why := missing_reference(reference)) is not None]
    problems += [f"{command}: in COMMANDS but shown in no document (remove it)" for command in COMMANDS
                 if command not in shown]
    assert not problems, "\n".join(problems)


def make_rule(target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe lines) of a Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(target)}\s*:(?!=)", line):
            prerequisites = line.split(":", 1)[1].split()
            recipe = []
            for following in lines[i + 1:]:
                if not following.startswith("\t"):
                    break
                recipe.append(following.strip())
            return prerequisites, recipe
    raise AssertionError(f"Makefile has no target {target}")


def test_what_the_table_says_of_make_and_ci_holds():
    _, run = make_rule("run")
    assert any("jobs/train_lenet.py --conf conf/spark-defaults.conf" in line for line in run), run
    test_prerequisites, _ = make_rule("test")
    pack_prerequisites, _ = make_rule("pack")
    assert set(pack_prerequisites) <= set(test_prerequisites), (pack_prerequisites, test_prerequisites)
    packed_env = next(p for p in pack_prerequisites if p != "dist")
    _, build = make_rule(packed_env)
    assert any(re.search(r"pip install (-q )?--no-deps \.$", line) for line in build), build
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    job = (ROOT / "tests" / "test_job.py").read_text()
    assert '"jobs" / "train_lenet.py"' in job and '"--conf", str(ROOT / "conf" / "spark-defaults.conf")' in job


def test_the_readme_starts_with_make_run_and_make_test_and_stays_short():
    commands = [command for _, command, _ in shell_commands(ROOT / "README.md")]
    assert commands[:2] == ["make run", "make test"], commands[:2]
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES} (the rest: docs/)"


def job_flags() -> dict[str, set[str]]:
    """Every flag each job's argument parser declares (read from the source; the jobs' code lives in
    mnist_lenet_spark/jobs/ and jobs/ holds their spark-submit entry points)."""
    flags = {}
    for job in ("train_lenet", "predict", "straggler_experiment"):
        found = set()
        for path in (ROOT / "jobs" / f"{job}.py", ROOT / "mnist_lenet_spark" / "jobs" / f"{job}.py"):
            if path.is_file():
                found |= set(re.findall(r"add_argument\(\s*[\"'](--[a-z0-9-]+)[\"']", path.read_text()))
        flags[job] = found
    return flags


def test_docs_cli_lists_every_flag_of_the_three_jobs():
    text = (ROOT / "docs" / "cli.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    missing = []
    for job, flags in job_flags().items():
        assert flags, f"no flags found for {job}"
        [section] = [s for s in sections if s.startswith(f"`jobs/{job}.py`")]
        missing += [f"{job}: {flag}" for flag in sorted(flags) if f"`{flag}`" not in section]
    assert not missing, "docs/cli.md lacks these flags (in the job's section, as `--flag`):\n" + "\n".join(missing)


def test_benchmark_commands_quoted_in_the_docs_name_scripts_and_flags_that_exist():
    problems = []
    for path in DOCS:
        for command in re.findall(r"`python (benchmarks/[^`]+)`", path.read_text()):
            words = shlex.split(command)
            script = ROOT / words[0]
            if not script.is_file():
                problems.append(f"{path.name}: {command}: no such script")
                continue
            source = script.read_text()
            problems += [f"{path.name}: {command}: {script.name} has no flag {word}" for word in words[1:]
                         if word.startswith("--") and f'"{word}"' not in source]
    assert not problems, "\n".join(problems)


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    in_fence = False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (found := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            text = re.sub(r"[^\w\- ]", "", found.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_relative_links_between_the_documents_resolve():
    problems = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                problems.append(f"{path.relative_to(ROOT)}: {target}: no heading with that anchor")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_tell_no_project_history(path):
    found = re.findall(r"(?i)\b(issue \d+|this session|last session|earlier session)\b", path.read_text())
    assert not found, f"{path.relative_to(ROOT)}: {found}"
