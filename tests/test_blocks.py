"""Generated README blocks (benchsuite.reporting.blocks): replaced between their markers, nothing else touched."""

from __future__ import annotations

import pytest

from benchsuite.reporting.blocks import read_block, replace_block, update_block

TEXT = "# Title\n\nprose\n<!-- t -->\nold\nrows\n<!-- /t -->\nafter\n<!-- u -->\nkept\n<!-- /u -->\n"


def test_replace_block_rewrites_only_its_block():
    new = replace_block(TEXT, "t", "| a |\n| 1 |")
    assert new == TEXT.replace("old\nrows", "| a |\n| 1 |")
    assert read_block(new, "t") == "| a |\n| 1 |" and read_block(new, "u") == "kept"
    assert replace_block(new, "t", "old\nrows") == TEXT  # round trip


@pytest.mark.parametrize("text", ["no block", "<!-- t -->\nunclosed", "<!-- /t -->\nclosed first <!-- t -->"])
def test_a_missing_block_is_an_error_naming_the_markers(text):
    with pytest.raises(ValueError, match="<!-- t --> ... <!-- /t -->"):
        replace_block(text, "t", "x")
    assert read_block(text, "t") is None


def test_update_block_writes_the_file_or_exits_with_the_reason(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(TEXT)
    update_block(readme, "u", "fresh")
    assert read_block(readme.read_text(), "u") == "fresh" and read_block(readme.read_text(), "t") == "old\nrows"
    with pytest.raises(SystemExit, match="README.md: no <!-- v -->"):
        update_block(readme, "v", "x")
    assert list(tmp_path.iterdir()) == [readme]  # no temp file left behind
