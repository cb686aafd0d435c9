"""The untrusted half of the eval phase: imports the candidate and maps token ids to logits.

`python -m harness.model_server CMD_FD REPLY_FD` is started by the scorer (harness.entry
eval), which holds the validation targets and computes val_bpb in its own process. This
process only ever sees input rows; whatever the candidate's code patches here (the loss,
the harness, torch) cannot touch the score. Replies are plain frames (harness.channel):

  LOAD <json>        -> OK   | ERR <kind> <message>   build the model, load the weights
  FWD  <B,T><ids>    -> LOGI <float32 bytes, B*T*V>  (CPU)
                      | CUDA <json: IPC handle of a float32 [B,T,V] tensor>  (GPU)
                      | ERR <kind> <message>
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
    last = None  # the logits the scorer may still be reading (CUDA IPC)
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
                last = logits.detach().float().contiguous()
                if device.type == "cuda":
                    channel.send(reply, b"CUDA", json.dumps(_share_cuda(last)).encode())
                else:
                    channel.send(reply, b"LOGI", last.numpy().tobytes())
            elif kind == b"PRBE":  # can the scorer open our CUDA memory? (before LOAD)
                probe_device = torch.device(payload.decode())
                last = torch.arange(1, 5, dtype=torch.float32, device=probe_device).view(1, 1, 4)
                channel.send(reply, b"CUDA", json.dumps(_share_cuda(last)).encode())
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
