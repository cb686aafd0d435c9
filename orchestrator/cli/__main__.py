"""`python -m orchestrator.cli`: the `autoresearch` command (how local workers are started)."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main())
