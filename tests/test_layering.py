"""Dependencies point one way: the orchestrator and the worker daemon never load torch."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_orchestrator_and_worker_daemon_do_not_import_torch():
    code = (
        "import sys\n"
        "import orchestrator.cli, orchestrator.research, orchestrator.proposers.llm\n"
        "import orchestrator.proposers.mutate, worker.jobs, worker.runner, harness.manifest\n"
        "import harness.profiles\n"
        "from harness import codes\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_harness_does_not_import_the_orchestrator_or_worker():
    code = (
        "import sys\n"
        "import harness.entry, harness.context, harness.evaluate, harness.prepare\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('orchestrator', 'worker')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _harness_imports() -> dict[str, set[str]]:
    """Each harness module and the harness modules it imports (anywhere in it)."""
    import ast

    graph = {}
    for path in sorted((REPO_ROOT / "harness").glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "harness":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("harness.")}
        graph[path.stem] = found - {path.stem}
    return graph


def test_the_harness_has_no_import_cycle():
    graph = _harness_imports()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done or name not in graph:
            return
        for dep in sorted(graph[name]):
            visit(dep, (*path, name))
        done.add(name)

    for module in graph:
        visit(module, ())
    # The scorer's entry point and the candidate's server meet only through the channel.
    assert "entry" not in graph["model_server"] and "model_server" not in graph["entry"]


def test_the_research_loop_imports_no_reader():
    """The loop writes what a run shows; the readers (status, logs, report, dashboard, the
    commands) read it. The loop never imports them."""
    readers = (
        "orchestrator.view",
        "orchestrator.report",
        "orchestrator.dashboard",
        "orchestrator.cli",
    )
    code = (
        "import sys\n"
        "import orchestrator.research\n"
        f"print(sorted(m for m in sys.modules if m.startswith({readers!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# Sizes a newcomer can read in one sitting: a module, a class, a function.
LIMITS = {"module": 500, "class": 400, "function": 80}


def test_no_module_class_or_function_outside_the_tests_is_over_its_size():
    import ast

    over = []
    for folder in ("harness", "worker", "orchestrator", "bench"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            source = path.read_text()
            name = path.relative_to(REPO_ROOT)
            if len(source.splitlines()) > LIMITS["module"]:
                over.append(f"{name}: {len(source.splitlines())} lines")
            for node in ast.walk(ast.parse(source)):
                kind = {ast.ClassDef: "class", ast.FunctionDef: "function"}.get(type(node))
                kind = "function" if isinstance(node, ast.AsyncFunctionDef) else kind
                if kind and node.end_lineno - node.lineno + 1 > LIMITS[kind]:
                    over.append(f"{name}:{node.lineno} {kind} {node.name}")
    assert over == []


def test_the_readmes_code_map_names_files_and_functions_that_exist():
    """How it works names the file and the function of each step: they must be there."""
    import ast
    import re

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## How it works") : readme.index("### Many workers")]
    files = set(re.findall(r"`((?:harness|worker|orchestrator)/[\w/]*\.py)`", section))
    named = re.findall(r"`([\w/]+\.py)` `([\w.]+)`", section)
    named += [(f, n) for n, f in re.findall(r"`([\w.]+)` in `([\w/]+\.py)`", section)]
    assert len(files) > 10 and len(named) > 10
    missing = [f for f in files if not (REPO_ROOT / f).is_file()]
    for path, name in named:
        tree = ast.parse((REPO_ROOT / path).read_text())
        scope = tree.body
        for part in name.split("."):
            found = [
                n for n in scope if isinstance(n, ast.ClassDef | ast.FunctionDef) and n.name == part
            ]
            if not found:
                missing.append(f"{path} {name}")
                break
            scope = found[0].body
    assert missing == []
