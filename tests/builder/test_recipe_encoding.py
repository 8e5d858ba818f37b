"""A recipe that is not UTF-8 is refused at the line of the bad byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import RecipeError
from builder.recipe import parse_recipe

from .test_recipe import BASE


def _with_bad_byte_on_line(line: int) -> bytes:
    lines = BASE.encode().splitlines(keepends=True)
    lines += [b"# padding\n"] * max(0, line - len(lines))
    lines[line - 1] = b"# caf\xe9 (Latin-1)\n"
    return b"".join(lines)


@pytest.mark.parametrize("line", [1, 26])
def test_non_utf8_byte_names_its_line_and_column(line):
    data = _with_bad_byte_on_line(line)
    with pytest.raises(RecipeError) as ei:
        parse_recipe(data, Path("r.yaml"))
    assert ei.value.line == line
    assert str(ei.value) == (f"r.yaml:{line}: the recipe is not UTF-8: byte 0xe9 at column 6 (offset "
                             f"{data.index(b'caf') + 3}) is not valid UTF-8; save the file as UTF-8.")


def test_cli_names_line_26_with_exit_2(tmp_path, capsys):
    from blindbox.cli import main
    path = tmp_path / "r.yaml"
    path.write_bytes(_with_bad_byte_on_line(26))
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"blindbox: error: {path}:26: the recipe is not UTF-8: byte 0xe9 at column 6"), err


@pytest.mark.parametrize("line, char, column", [(1, "\x00", 1), (26, "\x01", 9)])
def test_a_character_yaml_forbids_names_its_line_and_column_on_one_line(line, char, column):
    lines = BASE.splitlines(keepends=True)
    lines += ["# padding\n"] * max(0, line - len(lines))
    lines[line - 1] = "# caf" + "e" * (column - 6) + char + "\n" if column > 5 else char + "# nul\n"
    with pytest.raises(RecipeError) as ei:
        parse_recipe("".join(lines).encode(), Path("r.yaml"))
    assert ei.value.line == line
    assert str(ei.value) == (f"r.yaml:{line}: not valid YAML: character U+{ord(char):04X} at column {column} "
                             f"is not allowed in YAML; remove it.")
