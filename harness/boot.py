"""How every harness process starts: `python -I -S -B -u harness/boot.py CONFIG MODULE ARGS...`.

The interpreter runs isolated (-I: no PYTHON* variable, no user site, no script folder on
the path) and without `site` (-S: no `.pth` file, no sitecustomize or usercustomize runs),
so no start-up hook a candidate could plant runs here. This script, compiled from source
as every script is, then:

1. sets `sys.path` from CONFIG["path"] (the trusted parent's), or the interpreter's own
   site-packages, with the folder holding the harness first;
2. makes `harness` importable from its `.py` sources only: never a `__pycache__` file, a
   sourceless `.pyc` or an extension module planted beside them;
3. confines the process with CONFIG["cage"] (harness/cage.py) where one is given, and exits
   with codes.USAGE if CONFIG["require"] and the kernel cannot hold it;
4. runs MODULE as `__main__`.

Stdlib-only until step 2, and nothing of the candidate's is imported before step 4.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FLAGS = ("-I", "-S", "-B", "-u")


def command(
    python: str,
    module: str,
    args: list[str],
    *,
    path: list[str] | None = None,
    cage: dict | None = None,
    require: bool = False,
    boot: str | None = None,
) -> list[str]:
    """The argv that starts MODULE through this script (boot: its path as the process sees
    it, for a container)."""
    config = {"path": path, "cage": cage, "require": require}
    return [python, *FLAGS, boot or os.path.abspath(__file__), json.dumps(config), module, *args]


def _source_only_finder():
    import importlib.machinery
    import importlib.util

    class SourceOnly(importlib.machinery.SourceFileLoader):
        def get_code(self, fullname):  # never a cached .pyc: compile the reviewed source
            return compile(self.get_data(self.path), self.path, "exec", dont_inherit=True)

    class HarnessFinder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            top, _, sub = name.partition(".")
            if top != "harness":
                return None
            file = os.path.join(HERE, (sub or "__init__") + ".py")
            if "." in sub or not os.path.isfile(file):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return importlib.util.spec_from_file_location(
                name,
                file,
                loader=SourceOnly(name, file),
                submodule_search_locations=None if sub else [HERE],
            )

    return HarnessFinder


def _site_packages() -> list[str]:
    """This interpreter's site-packages, its virtual environment's first (without `site`
    a venv's python does not know its own prefix)."""
    import site

    prefixes = [sys.prefix]
    bindir = os.path.dirname(sys.executable)
    for folder in (bindir, os.path.dirname(bindir)):
        if os.path.isfile(os.path.join(folder, "pyvenv.cfg")):
            prefixes.insert(0, folder)
            break
    return site.getsitepackages(prefixes)


def main() -> None:
    config, module = json.loads(sys.argv[1]), sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    paths = config.get("path")
    if paths is None:
        paths = _site_packages()
    sys.path[:] = list(dict.fromkeys([ROOT, *filter(None, sys.path), *paths]))
    sys.meta_path.insert(0, _source_only_finder())
    if config.get("cage"):
        from harness import cage, codes

        try:
            line = cage.apply(cage.Policy.from_dict(config["cage"]))
        except cage.CageUnavailable as exc:
            print(f"harness: cage: {exc}", file=sys.stderr, flush=True)
            if config.get("require"):
                os._exit(codes.USAGE)
            line = f"not confined ({exc})"
        print(f"harness: cage: {line}", flush=True)
    import runpy

    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
