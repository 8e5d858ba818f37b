"""``measure.inputs.read_bounded``: the whole file, read with a buffer of its own size, and refused past its limit."""

from __future__ import annotations

import os

import pytest

from measure import inputs
from measure.errors import InputError


def test_a_regular_file_is_read_whole_up_to_its_limit(tmp_path):
    path = tmp_path / "fw.fd"
    data = os.urandom(3 * 4096 + 5)
    path.write_bytes(data)
    assert inputs.read_bounded(path, "firmware", len(data)) == data
    with pytest.raises(InputError, match="larger than 12,292 bytes"):
        inputs.read_bounded(path, "firmware", len(data) - 1)


class _Shrunk:
    """os.fstat as if the file had been ``by`` bytes shorter when it was opened (it grew since)."""

    def __init__(self, by: int):
        self.by, self.real = by, os.fstat

    def __call__(self, fd):
        st = self.real(fd)
        return os.stat_result((*st[:6], st.st_size - self.by, *st[7:]))


def test_a_file_that_grew_after_it_was_opened_is_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "fw.fd"
    data = os.urandom(64 * 1024)
    path.write_bytes(data)
    monkeypatch.setattr(inputs.os, "fstat", _Shrunk(40 * 1024))
    assert inputs.read_bounded(path, "firmware", len(data)) == data


def test_a_file_that_grew_past_its_limit_after_it_was_opened_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "fw.fd"
    path.write_bytes(bytes(64 * 1024))
    monkeypatch.setattr(inputs.os, "fstat", _Shrunk(40 * 1024))
    with pytest.raises(InputError, match="larger than 32,768 bytes"):
        inputs.read_bounded(path, "firmware", 32 * 1024)


def test_a_stream_is_read_up_to_one_byte_over_its_limit():
    with pytest.raises(InputError, match="larger than 4,096 bytes"):
        inputs.read_bounded("/dev/zero", "firmware", 4096)
