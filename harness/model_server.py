"""The untrusted half of the eval phase: imports the candidate and maps token ids to logits.

`python -m harness.model_server CMD_FD REPLY_FD` is started by the scorer (harness.entry
eval), which holds the validation targets and computes val_bpb in its own process. This
process only ever sees input rows; whatever the candidate's code patches here (the loss,
the harness, torch) cannot touch the score. Replies are plain frames (harness.channel):

  PRBE <json: device, numel> -> CUDA <json: IPC handle>   (GPU, before LOAD) allocate the
                                 logits buffer the scorer opens once; it holds 1, 2, 3, 4 first
  LOAD <json>        -> OK   | ERR <kind> <message>   build the model, load the weights
  FWD  <B,T><ids>    -> LOGI <float32 bytes, B*T*V>  (CPU)
                      | CUDA   (GPU: the logits are in the buffer's first B*T*V floats)
                      | ERR <kind> <message>

On a GPU the scorer reads only that one buffer, which the harness allocates before any
candidate code runs: an allocator setting the candidate picks later (expandable segments,
whose memory is shared through pidfd_getfd, or a custom allocator) cannot change how the
logits travel, and the scorer opens one IPC handle per eval, not one per batch.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import traceback
from pathlib import Path

from harness import channel


def _error_kind(exc: BaseException) -> str:
    import torch

    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return "oom"
    return "crash"


def serve(cmd, reply) -> None:
    import torch

    from harness import candidate
    from harness.context import Context
    from harness.evaluate import check_logits

    model = None
    device = None
    vocab = 0
    shared = None  # SharedLogits (CUDA): allocated at the probe, before the candidate's code
    while True:
        try:
            kind, payload = channel.recv(cmd)
        except channel.ChannelClosed:
            return
        try:
            if kind == b"LOAD":
                spec = json.loads(payload)
                device = torch.device(spec["device"])
                vocab = spec["vocab_size"]
                torch.manual_seed(spec["seed"])
                sandbox = _restrict(spec)
                ctx = Context(
                    vocab_size=vocab,
                    seq_len=spec["seq_len"],
                    device=device,
                    profile=spec["profile"],
                    seed=spec["seed"],
                    deadline=time.time(),
                )
                module = candidate.load(Path(spec["candidate"]))
                model = candidate.build(module, ctx)
                state = torch.load(spec["weights"], map_location=device, weights_only=True)
                model.load_state_dict(state)
                model.eval()
                channel.send(reply, b"OK  ", sandbox.encode())
            elif kind == b"FWD ":
                batch, seq = channel.SHAPE.unpack_from(payload)
                ids = torch.frombuffer(bytearray(payload[channel.SHAPE.size :]), dtype=torch.int64)
                x = ids.view(batch, seq).to(device)
                with torch.no_grad(), _autocast(device):
                    logits = check_logits(model(x), batch, seq, vocab)
                if device.type == "cuda":
                    if shared is None:
                        raise RuntimeError("CUDA logits asked for before the probe")
                    shared.put(logits.detach())
                    channel.send(reply, b"CUDA", b"")
                else:
                    channel.send(reply, b"LOGI", logits.detach().float().numpy().tobytes())
            elif kind == b"PRBE":  # can the scorer open our CUDA memory? (before LOAD)
                ask = json.loads(payload)
                shared = SharedLogits(torch.device(ask["device"]), int(ask["numel"]))
                channel.send(reply, b"CUDA", json.dumps(_share_cuda(shared.buf)).encode())
            else:
                raise ValueError(f"unknown command {kind!r}")
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, then we go on
            traceback.print_exc()
            sys.stderr.flush()
            message = f"{type(exc).__name__}: {exc}"[:2000]
            channel.send(reply, b"ERR ", f"{_error_kind(exc)} {message}".encode())
            if kind == b"LOAD":
                return


def _restrict(spec: dict) -> str:
    """Before the candidate's code runs: read only what serving it needs (not the prepared
    data), write only its scratch, no network. Returns a line for the log."""
    from harness import cage

    scratch = str(Path(spec["weights"]).parent)
    allowed = cage.python_paths() | {cage.harness_dir(), spec["candidate"], scratch}
    for var in ("HOME", "TMPDIR"):
        if os.environ.get(var):
            allowed.add(os.environ[var])
    try:
        line = cage.apply(cage.Policy(sorted(allowed), [scratch]))
    except cage.CageUnavailable as exc:
        try:  # without libseccomp (a container has its own network cage): files only
            line = f"Landlock ABI {cage.restrict_files(sorted(allowed), [scratch])}; {exc}"
        except cage.CageUnavailable as exc:
            return f"unrestricted reads ({exc}): the candidate could read the prepared data"
    return f"reads restricted ({line}): no access to the prepared data"


def _autocast(device):
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class SharedLogits:
    """The buffer the scorer reads the logits from (float32, numel long), made by the
    harness at the probe: before the candidate's code runs, so in an ordinary segment of
    the caching allocator, whatever allocator the candidate sets up later."""

    def __init__(self, device, numel: int):
        import torch

        self.buf = torch.zeros(max(numel, 4), dtype=torch.float32, device=device)
        self.buf[:4] = torch.arange(1, 5, dtype=torch.float32)
        self._sync()

    def put(self, logits):
        """Copy the logits to the buffer's start and wait until they are there (the scorer
        reads as soon as we reply, and waits for its own copy before it asks again)."""
        n = logits.numel()
        if n > self.buf.numel():
            raise ValueError(f"{n} logits do not fit the {self.buf.numel()} probed")
        view = self.buf[:n].view(logits.shape)
        view.copy_(logits)
        self._sync()
        return view

    def _sync(self) -> None:
        import torch

        if self.buf.is_cuda:
            torch.cuda.synchronize(self.buf.device)


def _allocator_env(env: dict) -> None:
    """Expandable segments off for the harness's own allocations (the probe's buffer): their
    IPC goes through pidfd_getfd, which a container's seccomp profile or Yama may refuse.
    Every other allocator setting is kept."""
    for key in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        if key in env:
            kept = [
                part
                for part in env[key].split(",")
                if part.strip() and part.split(":")[0].strip() != "expandable_segments"
            ]
            env[key] = ",".join(kept)


def _share_cuda(tensor) -> dict:
    """The CUDA IPC handle of a contiguous tensor's storage, as plain JSON."""
    (
        dev,
        handle,
        size,
        offset,
        ref_handle,
        ref_offset,
        event_handle,
        event_sync,
    ) = tensor.untyped_storage()._share_cuda_()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {
        "device": dev,
        "handle": b64(handle),
        "size": size,
        "offset": offset,
        "ref_handle": b64(ref_handle),
        "ref_offset": ref_offset,
        "event_handle": b64(event_handle),
        "event_sync": bool(event_sync),
        "storage_offset": tensor.storage_offset(),
    }


def main() -> int:
    cmd_fd, reply_fd = int(sys.argv[1]), int(sys.argv[2])
    _allocator_env(os.environ)  # before torch reads it
    import torch  # noqa: F401 - paid while the scorer waits for its go

    import harness.candidate  # noqa: F401
    import harness.context  # noqa: F401
    import harness.evaluate  # noqa: F401

    with os.fdopen(cmd_fd, "rb") as cmd, os.fdopen(reply_fd, "wb") as reply:
        serve(cmd, reply)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
