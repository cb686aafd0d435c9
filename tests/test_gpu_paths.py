"""What the GPU paths need, checked on a CPU (bench/gpu_check.sh observes them on a GPU)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from harness import entry, model_server, served
from harness import evaluate as ev
from tests.conftest import TINY_TRAIN, run_candidate
from tests.test_cage import BUDGET, runner  # noqa: F401
from tests.test_docker_runner import client, image  # noqa: F401
from tests.test_evaluate import Bigram, prepared  # noqa: F401


def test_the_scorer_initialises_cuda_before_it_opens_an_ipc_handle(monkeypatch):
    """torch's private IPC call dereferences state only CUDA's initialisation fills: a
    segfault (not an exception) otherwise."""
    calls = []
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))

    def opened(*args):
        calls.append("open")
        raise RuntimeError("no device here")

    monkeypatch.setattr(torch.UntypedStorage, "_new_shared_cuda", opened)
    meta = {k: 0 for k in ("device", "offset", "ref_offset", "storage_offset")}
    meta |= {k: base64.b64encode(b"h").decode() for k in ("handle", "ref_handle", "event_handle")}
    meta |= {"size": 64, "event_sync": False}
    with pytest.raises(RuntimeError, match="no device"):
        served._from_cuda_ipc(json.loads(json.dumps(meta)), 4)
    assert calls == ["init", "open"]


def test_a_failed_cuda_ipc_probe_is_the_hosts_failure_before_any_candidate_code(monkeypatch):
    """No fallback that scores with the candidate's code in the scorer: a HostFailure, which
    the entry point turns into codes.INFRA (the runner raises InfraError and RQ retries)."""

    class Server(served.ModelServer):
        def __init__(self):  # no process: only the probe's handling is under test
            self.loaded = False

        def _call(self, kind, payload):
            assert kind == b"PRBE"
            return b"LOGI", b""

        def load(self, spec):
            self.loaded = True

    server = Server()
    with pytest.raises(served.HostFailure, match="CUDA IPC probe failed"):
        server.check_cuda_sharing("cuda:0", 4)
    assert not server.loaded
    from harness import codes

    assert entry._classify(served.HostFailure("x")) == codes.INFRA


def test_the_logits_travel_in_the_harness_buffer_allocated_before_the_candidate():
    """The scorer reads every batch from the one buffer the probe made (before LOAD), not
    from a tensor the candidate's allocator placed: an expandable segment, say."""
    shared = model_server.SharedLogits(torch.device("cpu"), 2 * 3 * 5)
    assert shared.buf[:4].tolist() == [1.0, 2.0, 3.0, 4.0]  # what the scorer's probe checks
    logits = torch.randn(2, 3, 5, dtype=torch.bfloat16)
    view = shared.put(logits)
    assert view.untyped_storage().data_ptr() == shared.buf.untyped_storage().data_ptr()
    assert view.dtype == torch.float32 and torch.equal(view, logits.float())
    with pytest.raises(ValueError, match="do not fit"):
        shared.put(torch.zeros(2, 3, 6))


def test_the_model_server_allocates_without_expandable_segments():
    """Expandable segments share memory through pidfd_getfd, which a container's seccomp
    profile may refuse: off for the harness's buffer, every other setting kept."""
    env = {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True,max_split_size_mb:64",
        "PYTORCH_ALLOC_CONF": "expandable_segments:True",
        "OTHER": "expandable_segments:True",
    }
    model_server._allocator_env(env)
    assert env == {
        "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64",
        "PYTORCH_ALLOC_CONF": "",
        "OTHER": "expandable_segments:True",
    }


def test_every_eval_call_has_one_shape_so_a_compiled_model_never_recompiles(prepared):  # noqa: F811
    rows = ev.validation_rows(prepared["val"], prepared["bos"], prepared["seq_len"])
    batch = 7
    assert len(rows) % batch  # a short last batch
    shapes = []
    model = Bigram(prepared["vocab"]).eval()

    def forward(x):
        shapes.append((tuple(x.shape), x.is_contiguous()))
        return model(x)

    plan = ev.probe_plan(len(rows), batch, prepared["seq_len"])
    ev.evaluate_bpb(
        forward,
        rows,
        prepared["token_bytes"],
        vocab_size=prepared["vocab"],
        batch_size=batch,
        device=torch.device("cpu"),
        probe=plan,
    )
    assert set(shapes) == {((batch, prepared["seq_len"]), True)}
    assert len(shapes) > -(-len(rows) // batch)  # the probe's passes too


TEMP_IN_BUILD = """
import tempfile
_build = build_model
def build_model(ctx):  # what torch.compile's caches do in the eval phase's model server
    with tempfile.NamedTemporaryFile(suffix=".cache") as f:
        f.write(b"kernel")
        f.flush()
        assert open(f.name, "rb").read() == b"kernel"
    print("TEMP " + tempfile.gettempdir(), flush=True)
    return _build(ctx)
"""


def test_temporary_files_written_in_build_model_read_back_in_both_phases(runner, tmp_path):  # noqa: F811
    """TMPDIR is in the scratch under both runners, where the model server, confined, may
    write and read (under docker it was the container's /tmp, which it could not read)."""
    result, lines = run_candidate(runner, tmp_path / "work", TINY_TRAIN + TEMP_IN_BUILD, BUDGET)
    assert result["status"] == "ok", result["error"]
    temps = {phase: line.split()[-1] for phase, line in lines if "TEMP " in line}
    assert set(temps) == {"train", "eval"}
    assert all(t.endswith("scratch/tmp") for t in temps.values()), temps
    assert np.isfinite(result["val_bpb"])
