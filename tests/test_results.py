"""results.tsv: header once, whole lines, the original five columns first."""

from __future__ import annotations

import csv

import pytest

from orchestrator.results import COLUMNS, ROW_STATUSES, ResultsFile, best_kept, counts

ORIGINAL = ["commit", "val_bpb", "memory_gb", "status", "description"]


@pytest.fixture
def results(tmp_path) -> ResultsFile:
    return ResultsFile(tmp_path / "runs" / "tag" / "results.tsv")


def test_first_five_columns_are_the_original_log():
    assert list(COLUMNS[:5]) == ORIGINAL
    assert len(set(COLUMNS)) == len(COLUMNS)


def test_header_once_then_one_line_per_row(results):
    assert results.rows() == [] and not results.path.exists()
    results.append({"commit": "abc1234", "val_bpb": 1.5, "status": "keep", "description": "base"})
    results.append({"commit": "def5678", "val_bpb": 1.4, "status": "discard", "description": "x"})
    results.append({"commit": "0123456", "status": "crash", "description": "boom"})

    lines = results.path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # every line, the last one included, ends with a newline
    lines = lines[:-1]
    assert len(lines) == 4
    assert lines[0] == "\t".join(COLUMNS)
    assert lines[0].split("\t")[:5] == ORIGINAL
    assert sum(line.startswith("commit\t") for line in lines) == 1
    for line in lines:
        assert line.count("\t") == len(COLUMNS) - 1
    assert lines[1].split("\t")[:5] == ["abc1234", "1.500000", "", "keep", "base"]
    assert lines[3].split("\t")[:5] == ["0123456", "", "", "crash", "boom"]


def test_rows_read_back_what_was_written(results):
    row = {
        "commit": "abc1234",
        "val_bpb": 1.234567,
        "memory_gb": 2.5,
        "status": "keep",
        "description": "LR 0.03 -> 0.06",
        "id": "0001",
        "parent": "fedcba9",
        "proposer": "mutate",
        "worker": "host-gpu0-12",
        "training_s": 290.0,
        "tokens": 123456,
        "params": 1_000_000,
        "error": None,
    }
    results.append(row)
    (got,) = results.rows()
    assert list(got) == list(COLUMNS)
    assert got["commit"] == "abc1234"
    assert got["val_bpb"] == "1.234567"
    assert float(got["memory_gb"]) == 2.5
    assert got["description"] == "LR 0.03 -> 0.06"
    assert (got["id"], got["parent"], got["proposer"]) == ("0001", "fedcba9", "mutate")
    assert got["tokens"] == "123456" and got["params"] == "1000000"
    assert got["error"] == "" and got["time"] == ""


def test_tabs_and_newlines_are_flattened(results):
    results.append(
        {
            "commit": "a",
            "status": "crash",
            "description": "two\tcolumns\nand two\r\nlines",
            "error": "Traceback:\n  File x\n\tValueError: bad",
        }
    )
    results.append({"commit": "b", "status": "discard", "description": "next"})
    raw = results.path.read_text(encoding="utf-8").splitlines()
    assert len(raw) == 3
    rows = results.rows()
    assert [r["commit"] for r in rows] == ["a", "b"]
    assert rows[0]["description"] == "two columns and two lines"
    assert rows[0]["error"] == "Traceback: File x ValueError: bad"
    assert rows[0]["status"] == "crash"


def test_long_fields_are_cut(results):
    results.append({"commit": "a", "status": "crash", "error": "x" * 5000})
    assert 0 < len(results.rows()[0]["error"]) <= 300


@pytest.mark.parametrize(
    "description",
    ['"fast" init', '"unbalanced quote', 'say "hi"', "it's", '""'],
)
def test_quotes_in_fields_read_back_intact(results, description):
    """A description from an LLM may start with a double quote; rows() must not treat it as
    CSV quoting (which drops the quotes or swallows the following rows)."""
    results.append({"commit": "a", "status": "keep", "description": description})
    results.append({"commit": "b", "status": "discard", "description": "after"})
    rows = results.rows()
    assert [r["commit"] for r in rows] == ["a", "b"]
    assert rows[0]["description"] == description
    assert rows[1]["status"] == "discard"
    assert counts(rows) == {"keep": 1, "discard": 1}


def test_unknown_column_raises_and_writes_nothing(results):
    with pytest.raises(ValueError, match="unknown results columns.*'bogus'"):
        results.append({"commit": "a", "status": "keep", "bogus": 1})
    assert not results.path.exists()


@pytest.mark.parametrize("status", ["kept", "", None, "KEEP", "ok"])
def test_bad_status_raises(results, status):
    row = {"commit": "a", "description": "x"}
    if status is not None:
        row["status"] = status
    with pytest.raises(ValueError, match="bad row status"):
        results.append(row)
    assert not results.path.exists()


def test_every_documented_status_is_accepted(results):
    for status in ("keep", "discard", "crash", "oom", "nan", "timeout", "overtime", "rejected"):
        assert status in ROW_STATUSES
        results.append({"commit": status, "status": status})
    rows = results.rows()
    assert len(rows) == 8
    assert [r["status"] for r in rows] == [r["commit"] for r in rows]


def test_empty_existing_file_gets_a_header(results):
    results.path.parent.mkdir(parents=True)
    results.path.write_text("")
    results.append({"commit": "a", "status": "keep"})
    assert results.path.read_text().splitlines()[0] == "\t".join(COLUMNS)
    assert len(results.rows()) == 1


def test_readable_by_a_plain_tsv_reader(results):
    results.append({"commit": "a", "val_bpb": 1.1, "status": "keep", "description": "base"})
    with open(results.path, newline="") as fh:
        table = list(csv.reader(fh, delimiter="\t"))
    assert table[0][:5] == ORIGINAL
    assert table[1][:5] == ["a", "1.100000", "", "keep", "base"]


def test_best_kept_is_the_last_keep_row(results):
    assert best_kept([]) is None
    results.append({"commit": "c0", "val_bpb": 1.5, "status": "keep"})
    results.append({"commit": "c1", "val_bpb": 1.6, "status": "discard"})
    assert best_kept(results.rows())["commit"] == "c0"
    results.append({"commit": "c2", "val_bpb": 1.4, "status": "keep"})
    results.append({"commit": "c3", "status": "crash"})
    results.append({"commit": "c4", "val_bpb": 1.2, "status": "discard"})
    best = best_kept(results.rows())
    assert best["commit"] == "c2" and best["val_bpb"] == "1.400000"
    assert best_kept([{"status": "crash"}, {"status": "discard"}]) is None


def test_counts(results):
    for status in ("keep", "discard", "discard", "crash", "rejected", "discard"):
        results.append({"commit": "x", "status": status})
    assert counts(results.rows()) == {"keep": 1, "discard": 3, "crash": 1, "rejected": 1}
    assert counts([]) == {}


def test_tail_text_keeps_the_header(results):
    assert results.tail_text(5) == ""
    for i in range(10):
        results.append({"commit": f"c{i}", "status": "discard"})
    lines = results.tail_text(3).splitlines()
    assert lines[0] == "\t".join(COLUMNS)
    assert [line.split("\t")[0] for line in lines[1:]] == ["c7", "c8", "c9"]
    assert len(results.tail_text(100).splitlines()) == 11


def test_tail_text_zero_rows_is_the_header_alone(results):
    for i in range(3):
        results.append({"commit": f"c{i}", "status": "discard"})
    assert results.tail_text(0) == "\t".join(COLUMNS)


def test_the_readme_lists_every_results_column_in_order():
    import re
    from pathlib import Path

    from orchestrator.results import COLUMNS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = re.search(r"All columns: `([^`]+)`", readme)
    assert listed and tuple(listed.group(1).split()) == COLUMNS


def test_the_time_split_is_the_mean_of_each_part_over_the_rows_that_trained():
    from orchestrator.results import time_split, time_text

    def row(**seconds: float) -> dict[str, str]:
        return {f"{k}_s": f"{v:.6f}" for k, v in seconds.items()}

    rows = [
        row(queue=1, startup=2, first_step=4, training=24, save=1, eval=2, record=0.5, total=30),
        row(queue=3, startup=2, first_step=6, training=26, save=1, eval=2, record=1.5, total=34),
        {"status": "rejected", "training_s": ""},  # never trained: not in the means
    ]
    split = time_split(rows)
    assert split["rows"] == 2 and split["queue"] == 2 and split["first_step"] == 5
    assert split["steps"] == 20  # training less the first step: (20 + 20) / 2
    assert split["prestart"] is None and split["total"] == 32
    assert split["steps_share"] == 20 / 32
    assert time_text(split) == (
        "queue 2.00, startup 2.00, first step 5.00, steps 20.00, save 1.00, eval 2.00, "
        "record 1.00; steps 62.5% of 32.00 s (mean s of the last 2)"
    )
    assert time_split(rows[2:]) is None
    assert time_split(rows, last=1)["queue"] == 3
