"""Progress bars of `autoresearch prepare`: drawn on a terminal, never in a pipe or a log.

Real subprocesses run a real prepare with stdout and stderr on a pseudo-terminal (as a
person's shell gives them), with only stderr there (`> out`), or on pipes (as CI, compose
or `2> log` give them). The terminal is 100 columns wide, as a real one is: tqdm draws
nothing on a terminal of width 0, the size a fresh pty has.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests import test_download
from tests.conftest import REPO_ROOT, clean_env, write_corpus
from tests.test_download import State, make_parquet, texts_for

# What a bar leaves in its output: tqdm's percent-and-bar joint, its rates and names, the
# block characters (tqdm's and the tokenizers library's), the library's stage names, and
# the carriage returns that redraw a line.
BAR_MARKS = ("%|", "tok/s", "B/s", "tokenizing", "downloading", "█", "░", "Compute merges", "\r")
TIMEOUT_S = 120.0

# A child preparing from the local server without a train crop: argv is the URL pattern
# and the data folder. Its log is JSON lines on stderr, as the CLI's is off a terminal.
HTTP_PREPARE = """
import dataclasses, json, sys
from pathlib import Path
from harness.prepare import prepare
from harness.profiles import get_profile

profile = dataclasses.replace(
    get_profile("cpu"), vocab_size=300, val_tokens=400, max_train_tokens=None
)
emit = lambda event, **kw: print(json.dumps({"event": event, **kw}), file=sys.stderr)
prepare(Path(sys.argv[2]), profile, source="http", url_pattern=sys.argv[1],
        train_shards=2, val_shard=2, workers=2, emit=emit)
print("tqdm loaded:", "tqdm" in sys.modules)
"""

# A child that only downloads shards 0 and 1, retrying at once: argv is the URL pattern
# and the folder.
DOWNLOAD = """
import sys
from pathlib import Path
from harness.download import download_shards

download_shards(sys.argv[1], [0, 1], Path(sys.argv[2]), workers=2, backoff_s=0.001)
"""

# A child preparing the local corpus with tqdm unimportable: argv is the data folder and
# the corpus.
WITHOUT_TQDM = """
import sys
sys.modules["tqdm"] = None  # `import tqdm` now raises ImportError
from pathlib import Path
from harness.prepare import prepare
from harness.profiles import get_profile

prepare(Path(sys.argv[1]), get_profile("cpu"), source="local", local_dir=Path(sys.argv[2]))
"""


def _env() -> dict[str, str]:
    # A terminal sets TERM; the tokenizers library draws nothing without it. no_proxy: a
    # proxy from the environment must not intercept the local server.
    return clean_env(TERM="xterm", no_proxy="*")


def run_on_terminal(
    argv: list[str], stdout_too: bool = True, cwd: Path = REPO_ROOT, **env: str
) -> tuple[int, str, str]:
    """Run argv with stderr, and stdout unless told not to, on a pseudo-terminal.

    Returns the exit code, what came through a piped stdout ("" when it was the terminal)
    and everything the terminal got, read until the child closed it.
    """
    master, slave = pty.openpty()
    termios.tcsetwinsize(slave, (24, 100))
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**_env(), **env},
            stdin=subprocess.DEVNULL,
            stdout=slave if stdout_too else subprocess.PIPE,
            stderr=slave,
        )
    finally:
        os.close(slave)  # else the master never sees the end
    deadline = time.monotonic() + TIMEOUT_S
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                pytest.fail(f"{argv[:3]} still writing to its terminal after {TIMEOUT_S}s")
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal's last open end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    out = proc.stdout.read().decode() if proc.stdout is not None else ""
    return proc.wait(timeout=TIMEOUT_S), out, b"".join(chunks).decode("utf-8", "replace")


def run_piped(argv: list[str]) -> tuple[int, str, str]:
    """Run argv with stdout and stderr on pipes; (exit code, stdout, stderr)."""
    done = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return done.returncode, done.stdout, done.stderr


def segments(terminal: str) -> list[str]:
    """What the terminal shows piece by piece: the text between carriage returns and newlines."""
    return [s for s in re.split(r"[\r\n]+", terminal) if s.strip()]


def final_bar(terminal: str, desc: str) -> str:
    """The last state the bar ``desc`` was drawn in (tqdm draws its final state on close)."""
    drawn = [s for s in segments(terminal) if s.startswith(f"{desc}:")]
    assert drawn, f"no {desc!r} bar in {terminal!r}"
    return drawn[-1]


def assert_log_lines_stand_alone(terminal: str, event: str) -> None:
    """A log line written while a bar is live goes above the bar, never onto its line."""
    logged = [s for s in segments(terminal) if event in s]
    assert logged, terminal
    assert not [s for s in logged if any(mark in s for mark in ("%|", "tok/s", "B/s"))]


def assert_no_bars(text: str) -> None:
    assert [mark for mark in BAR_MARKS if mark in text] == [], repr(text)


def json_events(stderr: str) -> list[str]:
    """Every stderr line is one JSON object; their events in order."""
    return [json.loads(line)["event"] for line in stderr.splitlines()]


def fingerprint(text: str) -> str:
    """The fingerprint from `autoresearch prepare`'s result line."""
    return text.split("prepared ")[-1].split(" fingerprint ")[1].split()[0]


@pytest.fixture(scope="module")
def cli_prepare(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    """`autoresearch prepare` on the tiny corpus: on a terminal, with stdout redirected, piped."""
    root = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(root / "corpus")

    def argv(name: str) -> list[str]:
        return [
            *(sys.executable, "-m", "orchestrator.cli", "prepare", "--profile", "cpu"),
            *("--data-dir", str(root / name), "--local-dir", str(corpus)),
        ]

    return {
        "terminal": run_on_terminal(argv("terminal")),
        "stdout_redirected": run_on_terminal(argv("stdout_redirected"), stdout_too=False),
        "piped": run_piped(argv("piped")),
    }


def test_prepare_on_a_terminal_draws_token_bars_and_the_tokenizer_library_bars(
    cli_prepare: dict[str, tuple[int, str, str]],
) -> None:
    rc, _, terminal = cli_prepare["terminal"]
    assert rc == 0, terminal
    val, train = final_bar(terminal, "tokenizing val"), final_bar(terminal, "tokenizing train")
    # The totals are the cpu profile's crops, 32,768 val and 8,000,000 train tokens; the
    # tiny corpus holds less than either, so both bars stop short of 100%.
    assert re.fullmatch(r"tokenizing val: +\d+%\|.*\| [\d.]+k?/32\.8k \[.*tok/s\]", val), val
    assert re.fullmatch(r"tokenizing train: +\d+%\|.*\| [\d.]+k?/8\.00M \[.*tok/s\]", train)
    # The tokenizers library's own bars, on because stdout and stderr are a terminal.
    assert "Pre-processing sequences" in terminal and "Compute merges" in terminal
    assert "prepare.done" in terminal and "prepared " in terminal
    assert_log_lines_stand_alone(terminal, "prepare.shard")


def test_with_stdout_redirected_its_output_stays_one_line(
    cli_prepare: dict[str, tuple[int, str, str]],
) -> None:
    """The tokenizers library ends its bars with newlines on stdout: they stay off unless
    stdout is a terminal too, so `autoresearch prepare > out` gets only the result line."""
    rc, out, terminal = cli_prepare["stdout_redirected"]
    assert rc == 0, terminal
    assert out.startswith("prepared ") and out.count("\n") == 1, repr(out)
    assert "Compute merges" not in terminal
    assert final_bar(terminal, "tokenizing train")


def test_prepare_into_pipes_writes_json_lines_and_no_bar(
    cli_prepare: dict[str, tuple[int, str, str]],
) -> None:
    rc, out, stderr = cli_prepare["piped"]
    assert rc == 0, stderr
    assert_no_bars(stderr)
    assert_no_bars(out)
    events = json_events(stderr)
    assert events[-1] == "prepare.done" and "prepare.shard" in events


def test_bars_leave_the_prepared_data_alone(cli_prepare: dict[str, tuple[int, str, str]]) -> None:
    on_terminal = fingerprint(cli_prepare["terminal"][2])
    assert on_terminal == fingerprint(cli_prepare["stdout_redirected"][1])
    assert on_terminal == fingerprint(cli_prepare["piped"][1])


# tests/test_download.py's scripted HTTP server (a fixture), here serving shards 0, 1 and 2.
server = test_download.server


@pytest.fixture
def shard_server(server: State) -> State:
    for i in range(3):
        server.add(i, make_parquet(texts_for(i, 200)))
    return server


def bytes_shown(n: int) -> str:
    """n bytes as the download bar writes them (tqdm's unit_scale), as a regex."""
    from tqdm import tqdm

    return re.escape(tqdm.format_sizeof(n))


def test_http_prepare_on_a_terminal_shows_one_download_bar_in_bytes(
    shard_server: State, tmp_path: Path
) -> None:
    rc, _, terminal = run_on_terminal(
        [sys.executable, "-c", HTTP_PREPARE, shard_server.pattern(), str(tmp_path / "data")]
    )
    assert rc == 0, terminal
    total = bytes_shown(sum(len(body) for body in shard_server.files.values()))
    download = final_bar(terminal, "downloading")
    assert re.fullmatch(rf"downloading: 100%\|█+\| {total}/{total} \[.*B/s, 3/3 files\]", download)
    # Without a train crop the bar has no total: it counts tokens and names the file.
    train = final_bar(terminal, "tokenizing train")
    assert re.fullmatch(r"tokenizing train: [\d.]+k?tok \[.*tok/s, file 2/2\]", train), train
    assert final_bar(terminal, "tokenizing val").startswith("tokenizing val: 100%|")
    assert "Compute merges" in terminal
    assert_log_lines_stand_alone(terminal, '"prepare.downloaded"')
    assert "tqdm loaded: True" in terminal


def test_http_prepare_into_pipes_draws_nothing_and_never_loads_tqdm(
    shard_server: State, tmp_path: Path
) -> None:
    rc, out, stderr = run_piped(
        [sys.executable, "-c", HTTP_PREPARE, shard_server.pattern(), str(tmp_path / "data")]
    )
    assert rc == 0, stderr
    assert_no_bars(stderr)
    assert json_events(stderr).count("prepare.downloaded") == 3
    assert out == "tqdm loaded: False\n"


@pytest.mark.parametrize("server_ignores_range", [False, True], ids=["resumed", "restarted"])
def test_download_bar_ends_at_its_total_when_a_body_is_cut_short(
    shard_server: State, tmp_path: Path, server_ignores_range: bool
) -> None:
    """A cut body is resumed (the rest is expected) or fetched whole again (all of it, on
    top of the half that came): either way the total is the bytes that really arrive."""
    cut = shard_server.files["/shard_00000.parquet"]
    shard_server.script["/shard_00000.parquet"] = ["truncate"]
    shard_server.ignore_range = server_ignores_range
    rc, _, terminal = run_on_terminal(
        [sys.executable, "-c", DOWNLOAD, shard_server.pattern(), str(tmp_path)]
    )
    assert rc == 0, terminal
    assert len(shard_server.requests) == 3
    wasted = len(cut) // 2 if server_ignores_range else 0
    total = bytes_shown(len(cut) + wasted + len(shard_server.files["/shard_00001.parquet"]))
    download = final_bar(terminal, "downloading")
    assert re.fullmatch(rf"downloading: 100%\|█+\| {total}/{total} \[.*, 2/2 files\]", download)


def test_without_tqdm_prepare_still_runs_and_keeps_the_tokenizer_library_bars(
    tmp_path: Path,
) -> None:
    """An image built from a pinned package list may lack tqdm: no bar, not a failed prepare."""
    corpus = write_corpus(tmp_path / "corpus", files=20)
    rc, _, terminal = run_on_terminal(
        [sys.executable, "-c", WITHOUT_TQDM, str(tmp_path / "data"), str(corpus)]
    )
    assert rc == 0, terminal
    assert "tokenizing" not in terminal and "%|" not in terminal
    assert "Compute merges" in terminal
