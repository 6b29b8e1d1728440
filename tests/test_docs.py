"""Every shell command shown in README.md and docs/*.md is run as written by a test, or marked as needing a cluster
with the namespace-cluster test that covers it named; and the documents hold together: the README's first
commands, its length, every job flag in docs/cli.md, the benchmark commands quoted inline, relative links.
Reads files only: no Spark, no subprocess; runs in well under a second."""
from __future__ import annotations

import ast
import json
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
    "spark-submit --master spark://HOST:7077 --properties-file conf/spark-defaults.conf --driver-java-options "
    "-Dlog4j2.configurationFile=conf/log4j2.properties --archives dist/mnist_lenet_spark_env.tar.gz#environment "
    "--conf spark.pyspark.python=./environment/bin/python --conf spark.pyspark.driver.python=.venv/bin/python "
    "--py-files dist/mnist_lenet_spark.zip jobs/train_lenet.py --train hdfs:///data/train.parquet --test "
    "hdfs:///data/test.parquet --format parquet": (
        ("tests/test_netns_cluster.py::test_spark_submit_as_the_readme_shows_it",),
        "the README's spark-submit line needs a cluster: the namespace-cluster test runs it as written against the "
        "cluster's master, with the training data in the cluster's storage and smaller sizes (`--max-steps 3 "
        "--batch-size 16 --no-progress`). Mapped here rather than marked in the README, whose command blocks name "
        "no tests"),
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


#: Words about how the project was built, which user documents and the scripts users run do not use (history
#: belongs in CHANGELOG.md, with the version it happened in).
HISTORY = re.compile(r"(?i)\b(issue \d+|this session|last session|earlier session|an? earlier version|(?:were|was) "
                     r"retired|meets? the target)\b|\bTargets?:")
USER_SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "jobs").glob("*.py"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_tell_no_project_history(path):
    found = [m.group(0) for m in HISTORY.finditer(path.read_text())]
    assert not found, f"{path.relative_to(ROOT)}: {found}"


def test_scripts_users_run_name_no_issues():
    found = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path in USER_SCRIPTS
             for m in re.finditer(r"(?i)\bissue \d+", path.read_text())]
    assert not found, "\n".join(found)


def test_the_readme_command_blocks_name_no_tests():
    """What a user copies from the README is commands: its cluster commands are mapped in COMMANDS above."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, flags=re.M | re.S)
    assert blocks
    found = [line for block in blocks for line in block.splitlines() if re.search(r"\btests/|::test_", line)]
    assert not found, found


def test_the_python_and_pyspark_ranges_are_the_same_everywhere():
    """pyproject.toml, scripts/check_python.py and the README's requirements say the same Python and pyspark floors,
    and the pyspark the suite runs on meets the floor."""
    import importlib.metadata
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = re.fullmatch(r">=(\d+)\.(\d+)", project["requires-python"])
    assert python, project["requires-python"]
    major, minor = python.groups()
    check = (ROOT / "scripts" / "check_python.py").read_text()
    assert f"sys.version_info < ({major}, {minor})" in check and f"Python {major}.{minor} or newer" in check
    [pyspark] = [d for d in project["dependencies"] if re.match(r"pyspark\b", d)]
    floor = re.fullmatch(r"pyspark>=(\d+)\.(\d+)", pyspark)
    assert floor, pyspark
    requirements = (ROOT / "README.md").read_text().split("## Requirements", 1)[1].split("\n## ", 1)[0]
    assert f"Python {major}.{minor} or newer" in requirements
    assert f"pyspark {floor.group(1)}.{floor.group(2)} or newer" in requirements
    installed = tuple(int(v) for v in importlib.metadata.version("pyspark").split(".")[:2])
    assert installed >= (int(floor.group(1)), int(floor.group(2))), installed


RESULT_PATH = re.compile(r"benchmarks/results/[\w./*-]*\w")


def test_every_result_file_a_document_names_exists():
    missing = []
    for path in DOCS:
        for name in sorted(set(RESULT_PATH.findall(path.read_text()))):
            if not (list(ROOT.glob(name)) if "*" in name else (ROOT / name).exists()):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, "Result files the documents name that do not exist:\n" + "\n".join(missing)


# Figures quoted from a results file. A comment `<!-- figures: benchmarks/results/A.json[, ...][; columns 1,3-5] -->`
# on a line of its own with text right below it marks the table or paragraph that follows; at the end of a paragraph
# or list item (the last line of it, or on the line after it), it marks that paragraph or item. Every number in the marked text (outside `code`, links and names such as ResNet-8) must
# be in the named files as printed: a value v matches a number printed with d decimals when v, or 100 v (a
# percentage), rounds to it. In a table, each body row's numbers (in the given columns, 1-based; default all) must
# all be found in ONE object of one file (any object below the top level, with everything inside it), so a row
# cannot borrow an edited number from another run. In a paragraph, each number must be somewhere in the files,
# leaving out their snapshot curves and tuning trials (so many points that an edited accuracy would often be one).
PROSE_SKIPS = {"curves", "tuning"}
FIGURES = re.compile(r"<!--\s*figures:\s*(.*?)\s*-->")
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?(?![A-Za-wyz_\d])")
ITEM_START = re.compile(r"^\s*(?:[-*+]|\d+\.)\s")


def numbers_in(text: str) -> list[str]:
    """The numbers in a piece of Markdown, as printed, leaving out code, links, comments and names like ResNet-8."""
    text = re.sub(r"<!--.*?-->|`[^`]*`|\]\([^)]*\)|\b[A-Za-z]+-\d+\b", " ", text)
    return [whole + (decimals or "") for whole, decimals in NUMBER.findall(text)]


def json_numbers(value) -> list[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    children = value.values() if isinstance(value, dict) else value
    return [number for child in children for number in json_numbers(child)]


def json_objects(value, top: bool = True) -> list[list[float]]:
    """The numbers inside each object below the top level of a JSON document, one list per object."""
    found = []
    if isinstance(value, dict) and not top:
        found.append(json_numbers(value))
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    for child in children:
        found += json_objects(child, top=False)
    return found


def matches(printed: str, values) -> bool:
    x = float(printed.replace(",", ""))
    decimals = len(printed.partition(".")[2])
    tolerance = 0.5 * 10 ** -decimals + 1e-9
    return any(abs(abs(v) - x) <= tolerance or abs(abs(100 * v) - x) <= tolerance for v in values)


def marked_blocks(text: str) -> list[tuple[int, str, list[str], set[int] | None]]:
    """(line number, marker, its files, its columns or None) and the block of lines it marks, for every marker."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        found = FIGURES.search(line)
        if not found:
            continue
        files_part, _, columns_part = found.group(1).partition(";")
        files = [f.strip() for f in files_part.split(",") if f.strip()]
        columns = None
        if columns_part.strip():
            spec = re.fullmatch(r"columns\s+([\d,\s-]+)", columns_part.strip())
            assert spec, f"line {i + 1}: bad columns in {found.group(0)}"
            columns = set()
            for part in spec.group(1).replace(" ", "").split(","):
                low, _, high = part.partition("-")
                columns |= set(range(int(low), int(high or low) + 1))
        if line.strip() == found.group(0) and i + 1 < len(lines) and lines[i + 1].strip():
            end = i + 1  # alone on its line, text below: the table or paragraph that follows
            while end < len(lines) and lines[end].strip():
                end += 1
            block = lines[i + 1:end]
        else:  # at the end of a paragraph or list item: that paragraph or item
            start = i
            while start > 0 and lines[start - 1].strip() and not ITEM_START.match(lines[start]):
                start -= 1
            block = lines[start:i + 1]
        blocks.append((i + 1, files, columns, block))
    return blocks


def figure_problems(text: str) -> list[str]:
    problems = []
    for number, files, columns, block in marked_blocks(text):
        missing = [f for f in files if not (ROOT / f).is_file()]
        if missing or not block:
            problems.append(f"line {number}: " + (f"no such file {missing}" if missing else "marks nothing"))
            continue
        documents = [json.loads((ROOT / f).read_text()) for f in files]
        if all(line.lstrip().startswith("|") for line in block):
            objects = [numbers for document in documents for numbers in json_objects(document)]
            for row in block[2:]:  # below the header and its separator
                cells = [c for i, c in enumerate(row.strip().strip("|").split("|"), 1) if columns is None or i in columns]
                printed = numbers_in(" ".join(cells))
                if printed and not any(all(matches(p, numbers) for p in printed) for numbers in objects):
                    unmatched = min((sum(not matches(p, n) for p in printed), [p for p in printed if not matches(p, n)])
                                    for n in objects)[1]
                    problems.append(f"line {number}: the row {row.strip()[:60]!r}: no one object of {files} holds "
                                    f"all its numbers; the closest lacks {unmatched}")
        else:
            values = [v for document in documents for key, part in document.items() if key not in PROSE_SKIPS
                      for v in json_numbers(part)]
            unmatched = [p for p in numbers_in(" ".join(block)) if not matches(p, values)]
            if unmatched:
                problems.append(f"line {number}: {unmatched} are in none of {files}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_figures_marked_with_their_result_file_are_in_it(path):
    problems = figure_problems(path.read_text())
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_the_main_tables_of_the_readme_and_the_async_comparison_are_marked():
    readme = marked_blocks((ROOT / "README.md").read_text())
    headline = [block for _, _, _, block in readme if block and block[0].startswith("| figure | setting")]
    assert headline and len(headline[0]) >= 5, "the README's headline table has no figures marker"
    assert any("98.5 %" in " ".join(block) for _, _, _, block in readme), "the README's async comparison is unmarked"
    tables = {tuple(files) for _, files, _, block in marked_blocks((ROOT / "docs" / "async.md").read_text())
              if block[0].startswith("| run")}
    assert {f"benchmarks/results/time_to_accuracy{name}.json" for name in
            ("", "_fitted", "_heavy", "_cluster_full")} <= {f for files in tables for f in files}, tables


def test_the_figure_check_fails_when_a_quoted_number_is_edited():
    readme = (ROOT / "README.md").read_text()
    assert not figure_problems(readme)
    for figure, edited in (("0.429 s", "0.439 s"), ("99.16 %", "99.26 %"), ("0.9805", "0.9815"), ("75, 105", "75, 95")):
        assert figure in readme, figure
        assert figure_problems(readme.replace(figure, edited, 1)), f"{figure} -> {edited} went unnoticed"
    async_md = (ROOT / "docs" / "async.md").read_text()
    row = "| async | 4 | 0.005 | 135 s | - | 0.9856 |"
    assert row in async_md
    assert figure_problems(async_md.replace(row, row.replace("0.9856", "0.9866"), 1))


def test_each_time_to_accuracy_command_shown_gives_the_settings_its_results_file_records():
    """Every `python benchmarks/time_to_accuracy.py ... --out benchmarks/results/X.json` quoted in the documents,
    parsed by the script's own parser, has the settings X.json records. With --netns-cluster the file holds the
    settings of the driver the wrapper starts on the cluster: no --netns-cluster, and --cluster-hosts max N + max b."""
    import sys
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from time_to_accuracy import parse_args
    checked, problems = 0, []
    for path in DOCS:
        for command in re.findall(r"python (benchmarks/time_to_accuracy\.py [^`]*--out[^`]*)`", path.read_text()):
            args = parse_args(shlex.split(command)[1:])
            recorded = json.loads((ROOT / args.out).read_text())["settings"]
            expected = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            if args.netns_cluster:
                expected |= {"netns_cluster": False, "cluster_hosts": max(args.workers) + max(args.backup)}
                expected.pop("master")
            for key, value in expected.items():
                if key in recorded and key not in ("out", "lrs_from", "replot"):
                    if recorded[key] != value:
                        problems.append(f"{path.name}: {command[:60]}...: {key} is {value!r}, the file has "
                                        f"{recorded[key]!r}")
            if (args.lrs_from is None) != (recorded.get("lrs_from") is None) or (
                    args.lrs_from and Path(recorded["lrs_from"]).name != args.lrs_from.name):
                problems.append(f"{path.name}: {command[:60]}...: --lrs-from differs from the file's")
            checked += 1
    assert checked >= 4, checked
    assert not problems, "\n".join(problems)
