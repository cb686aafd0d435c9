"""The SEARCH/REPLACE edit format: what applies, and the exact reason when it does not."""

from __future__ import annotations

import pytest

from orchestrator.edits import EditError, apply_reply, extract_description

SOURCE = """\
import torch

LR = 0.01
BATCH_SIZE = 8
WARMUP = 0.1


def build_model(ctx):
    return torch.nn.Embedding(ctx.vocab_size, ctx.vocab_size)


def train(model, ctx):
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    for x, y in ctx.batches(BATCH_SIZE):
        opt.zero_grad()
"""


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def reply(*blocks: str, description: str = "DESCRIPTION: raise LR to 0.02") -> str:
    return description + "\n\n" + "\n".join(blocks)


def test_single_block_applies_and_returns_description():
    new, description = apply_reply(SOURCE, reply(block("LR = 0.01", "LR = 0.02")))
    assert new == SOURCE.replace("LR = 0.01", "LR = 0.02")
    assert description == "raise LR to 0.02"


def test_blocks_apply_in_order_each_to_the_previous_result():
    second_sees_first = block("LR = 0.02\nBATCH_SIZE = 8", "LR = 0.03\nBATCH_SIZE = 16")
    new, _ = apply_reply(SOURCE, reply(block("LR = 0.01", "LR = 0.02"), second_sees_first))
    assert "LR = 0.03\nBATCH_SIZE = 16\n" in new
    assert "0.01" not in new and "0.02" not in new


def test_fences_prose_and_named_file_lines_are_ignored():
    text = (
        "I think a higher LR helps.\n"
        "DESCRIPTION: raise LR\n\n"
        "workspace/train.py\n"
        "```python\n" + block("LR = 0.01", "LR = 0.02") + "```\n\n"
        "FILE: train.py\n"
        "```\n" + block("WARMUP = 0.1", "WARMUP = 0.05") + "```\n"
        "`train.py`:\n" + block("BATCH_SIZE = 8", "BATCH_SIZE = 4") + "That is all."
    )
    new, _ = apply_reply(SOURCE, text)
    assert "LR = 0.02" in new and "WARMUP = 0.05" in new and "BATCH_SIZE = 4" in new


def test_crlf_replies_apply():
    text = reply(block("LR = 0.01", "LR = 0.02")).replace("\n", "\r\n")
    new, _ = apply_reply(SOURCE, text)
    assert new == SOURCE.replace("LR = 0.01", "LR = 0.02")


def test_empty_replace_deletes_lines():
    new, _ = apply_reply(SOURCE, reply(block("WARMUP = 0.1\n", "")))
    assert "WARMUP" not in new


def test_multiline_indented_block():
    search = "    for x, y in ctx.batches(BATCH_SIZE):\n        opt.zero_grad()"
    replace = "    for x, y in ctx.batches(BATCH_SIZE):\n        opt.zero_grad(set_to_none=True)"
    new, _ = apply_reply(SOURCE, reply(block(search, replace)))
    assert "        opt.zero_grad(set_to_none=True)\n" in new


def test_trailing_whitespace_difference_is_tolerated():
    new, _ = apply_reply(SOURCE, reply(block("LR = 0.01   ", "LR = 0.02")))
    assert "LR = 0.02\n" in new


def test_leading_whitespace_difference_is_not_tolerated():
    search = "for x, y in ctx.batches(BATCH_SIZE):"
    with pytest.raises(EditError, match="SEARCH block 1 does not match train.py"):
        apply_reply(SOURCE, reply(block(search, "for x, y in ctx.batches(4):")))


def test_search_must_be_whole_lines():
    # "LR = 0.0" is a prefix of a line, not a line: no partial-line guessing.
    with pytest.raises(EditError, match="SEARCH block 1 does not match train.py"):
        apply_reply(SOURCE, reply(block("LR = 0.0", "LR = 0.5")))


def test_file_without_trailing_newline():
    source = "LR = 0.01\ndef build_model(ctx): ...\nLAST = 1"
    new, _ = apply_reply(source, reply(block("LAST = 1", "LAST = 2")))
    assert new == "LR = 0.01\ndef build_model(ctx): ...\nLAST = 2"


@pytest.mark.parametrize("name", ["model.py", "harness/eval.py", "`../harness/data.py`"])
def test_edit_touching_another_file_is_refused(name):
    text = reply(f"{name}\n```python\n" + block("LR = 0.01", "LR = 0.02") + "```")
    bare = name.strip("`").removeprefix("../")
    with pytest.raises(EditError, match=f"edit touches another file: .*{bare}"):
        apply_reply(SOURCE, text)


def test_second_block_not_matching_names_its_number():
    text = reply(block("LR = 0.01", "LR = 0.02"), block("DROPOUT = 0.1", "DROPOUT = 0.0"))
    with pytest.raises(EditError, match="^SEARCH block 2 does not match train.py$"):
        apply_reply(SOURCE, text)


def test_ambiguous_search_says_how_many_places():
    source = SOURCE + "\n\ndef other():\n    x = 1\n\n\ndef more():\n    x = 1\n"
    with pytest.raises(EditError, match="^SEARCH block 1 matches 2 places; add context$"):
        apply_reply(source, reply(block("    x = 1", "    x = 2")))


def test_no_blocks():
    with pytest.raises(EditError, match="^reply has no SEARCH/REPLACE edit$"):
        apply_reply(SOURCE, "DESCRIPTION: raise LR\n\nJust set LR = 0.02, it will help.")


def test_missing_description():
    with pytest.raises(EditError, match="DESCRIPTION"):
        apply_reply(SOURCE, block("LR = 0.01", "LR = 0.02"))


def test_blank_description_counts_as_missing():
    with pytest.raises(EditError, match="DESCRIPTION"):
        apply_reply(SOURCE, reply(block("LR = 0.01", "LR = 0.02"), description="DESCRIPTION:  "))


def test_edit_that_changes_nothing():
    with pytest.raises(EditError, match="^edit changes nothing$"):
        apply_reply(SOURCE, reply(block("LR = 0.01", "LR = 0.01")))


def test_unclosed_block():
    text = "DESCRIPTION: x\n<<<<<<< SEARCH\nLR = 0.01\n=======\nLR = 0.02\n"
    with pytest.raises(EditError, match="SEARCH block 1 is not closed"):
        apply_reply(SOURCE, text)


def test_empty_search():
    with pytest.raises(EditError, match="SEARCH block 1 is empty"):
        apply_reply(SOURCE, reply(block("", "NEW = 1")))


def test_description_is_one_clipped_tsv_safe_line():
    long = "DESCRIPTION: raise\tLR   " + "x" * 300
    _, description = apply_reply(SOURCE, reply(block("LR = 0.01", "LR = 0.02"), description=long))
    assert "\t" not in description and "\n" not in description
    assert description.startswith("raise LR x")
    assert len(description) == 200


def test_markdown_decorated_description():
    text = reply(block("LR = 0.01", "LR = 0.02"), description="**Description:** raise LR")
    assert apply_reply(SOURCE, text)[1] == "raise LR"


def test_extract_description():
    assert extract_description("DESCRIPTION: try GELU\nno blocks") == "try GELU"
    assert extract_description("nothing here") == ""
