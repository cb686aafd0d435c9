"""The scorer's side of the eval phase's channel: the model server as a process it talks to.

The scorer (harness/entry.py) holds the validation targets and never imports train.py;
`ModelServer` starts `harness.model_server` (which does) and exchanges plain frames with it
(harness/channel.py): token ids out, logits back, as bytes or a CUDA IPC handle.
"""

from __future__ import annotations

import json
import os
import sys

from harness import channel, codes


class HostFailure(RuntimeError):
    """The host failed before any candidate code ran in the eval phase: exit codes.INFRA."""


class BadChannel(RuntimeError):
    """The model server's channel answered wrongly."""


class ServedError(RuntimeError):
    """The model server (the candidate's code) failed; kind is oom or crash."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class ModelServer:
    """The scorer's handle on the candidate's model, which lives in another process.

    The scorer never imports train.py: whatever the candidate patches at import time or in
    forward() stays in the model server, and the targets never leave the scorer.
    """

    def __init__(self) -> None:
        import subprocess
        import threading

        self._shared = None  # the logits buffer in the model server (CUDA), after the probe
        cmd_r, cmd_w = os.pipe()
        reply_r, reply_w = os.pipe()
        from harness import boot

        # Started like every harness process (harness/boot.py: no start-up hooks, the
        # harness from source only), with this process's path; it confines itself further
        # before it imports train.py.
        self.proc = subprocess.Popen(
            boot.command(
                sys.executable, "harness.model_server", [str(cmd_r), str(reply_w)], path=sys.path
            ),
            pass_fds=(cmd_r, reply_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        os.close(cmd_r)
        os.close(reply_w)
        self.cmd = os.fdopen(cmd_w, "wb")
        self.reply = os.fdopen(reply_r, "rb")
        # Its output is the candidate's: marked, so no line of it passes for the harness's.
        self._echo = threading.Thread(target=self._relay, daemon=True)
        self._echo.start()

    def _relay(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            print(f"{codes.CANDIDATE_MARK}{line}", flush=True)

    def _call(self, kind: bytes, payload: bytes) -> tuple[bytes, bytes]:
        try:
            channel.send(self.cmd, kind, payload)
            got, body = channel.recv(self.reply)
        except (BrokenPipeError, channel.ChannelClosed):
            self.proc.wait()
            raise ServedError(
                "crash", f"the model server exited (code {self.proc.returncode})"
            ) from None
        if got == b"ERR ":
            what, _, message = body.decode("utf-8", "replace").partition(" ")
            raise ServedError(what, message)
        return got, body

    def load(self, spec: dict) -> None:
        _, sandbox = self._call(b"LOAD", json.dumps(spec).encode())
        print(f"harness: model server {sandbox.decode('utf-8', 'replace')}", flush=True)

    def forward(self, x):
        import numpy as np
        import torch

        from harness.evaluate import BadLogits

        batch, seq = x.shape
        ids = x.to(torch.int64).contiguous().numpy().tobytes()
        kind, body = self._call(b"FWD ", channel.SHAPE.pack(batch, seq) + ids)
        want = batch * seq * self.vocab
        if kind == b"LOGI":
            if len(body) != want * 4:
                raise BadLogits(
                    f"model server sent {len(body)} bytes of logits, expected {want * 4}"
                )
            return torch.from_numpy(np.frombuffer(body, dtype=np.float32).copy()).view(
                batch, seq, self.vocab
            )
        if kind == b"CUDA":
            if self._shared is None or want > self._shared.numel():
                raise BadLogits("model server replied CUDA outside the probed buffer")
            out = self._shared[:want].view(batch, seq, self.vocab).clone()
            torch.cuda.synchronize(out.device)  # read before the model server writes again
            return out
        raise BadLogits(f"model server replied {kind!r}")

    def check_cuda_sharing(self, device, numel: int) -> None:
        """Before the candidate is loaded: the model server allocates the buffer of numel
        floats that every batch's logits will arrive in, and it must open here (it holds
        1, 2, 3, 4 first). A failure is the host's (HostFailure), never a reason to score
        in this process: the scorer never runs candidate code."""
        try:
            ask = json.dumps({"device": str(device), "numel": numel}).encode()
            kind, body = self._call(b"PRBE", ask)
            if kind != b"CUDA":
                raise BadChannel(f"the model server replied {kind!r} to the probe")
            shared = _from_cuda_ipc(json.loads(body), numel)
            if shared[:4].tolist() != [1.0, 2.0, 3.0, 4.0]:
                raise BadChannel("the probe tensor arrived with other values")
        except Exception as exc:  # noqa: BLE001 - any failure, before any candidate code
            raise HostFailure(f"CUDA IPC probe failed: {type(exc).__name__}: {exc}") from None
        self._shared = shared

    def close(self) -> None:
        try:
            self.cmd.close()
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait()


def _from_cuda_ipc(meta: dict, numel: int):
    """The model server's float32 buffer on the GPU (numel long at least), from its IPC
    handle: a view on the other process's memory, kept open for the whole eval."""
    import base64

    import torch

    from harness.evaluate import BadLogits

    b = base64.b64decode
    # Opening an IPC handle needs CUDA initialised in this process (the private call below
    # dereferences state that only initialisation fills; a segfault otherwise).
    torch.cuda.init()
    offset = int(meta["storage_offset"])
    if offset < 0 or int(meta["size"]) < (offset + numel) * 4:
        raise BadLogits("model server shared a CUDA buffer smaller than the logits")
    storage = torch.UntypedStorage._new_shared_cuda(
        int(meta["device"]),
        b(meta["handle"]),
        int(meta["size"]),
        int(meta["offset"]),
        b(meta["ref_handle"]),
        int(meta["ref_offset"]),
        b(meta["event_handle"]),
        bool(meta["event_sync"]),
    )
    out = torch.empty(0, dtype=torch.float32, device=f"cuda:{int(meta['device'])}")
    return out.set_(storage, offset, (numel,), (1,))
