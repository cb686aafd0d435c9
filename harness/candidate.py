"""Import a candidate train.py and build its model: what runs the candidate's code.

Only the train phase and the eval phase's model server call these; the scorer never does.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("train", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    for name in ("build_model", "train"):
        if not callable(getattr(module, name, None)):
            raise AttributeError(f"train.py defines no {name}()")
    return module


def build(module: ModuleType, ctx):
    import torch

    model = module.build_model(ctx)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"build_model returned {type(model).__name__}, not a torch.nn.Module")
    return model
