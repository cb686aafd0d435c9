"""Dependencies point one way: the orchestrator and the worker daemon never load torch."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_orchestrator_and_worker_daemon_do_not_import_torch():
    code = (
        "import sys\n"
        "import orchestrator.cli, orchestrator.loop, orchestrator.proposers.llm\n"
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
