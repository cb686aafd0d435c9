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
