"""Size fields inside a .deb are checked before anything is allocated or written for them.

A data.tar whose extended header claims hundreds of MiB (a gzip bomb: about 2 MiB
on disk) used to be read into memory whole; here it is refused in one sentence under a
512 MiB address-space limit.  The member-count and unpacked-size limits are lowered
for their tests (the real ones, docs/limits.md, would need gigabytes of test data).
"""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path

import pytest

from builder.sources import deb as deb_reader
from builder.errors import SourceError
from builder.limits import MAX_DEB_CONTROL_BYTES, MAX_TAR_HEADER_BYTES
from builder.sources import extract_deb, read_deb_control
from tests.memlimit import run_python

from tests.builder.fakes import ar_archive

from .test_sources import _hand_deb, _ti

CONTROL = b"Package: hostile\nVersion: 1\nArchitecture: all\nDescription: x\n"


def _control_tar(text: bytes = CONTROL) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("./control")
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _bomb_deb(path: Path, kind: bytes, claimed: int) -> Path:
    """data.tar.gz: one extended header claiming ``claimed`` bytes, followed by that many zeros."""
    co = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [co.compress(_header("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink", kind, claimed))]
    zeros = bytes(1 << 20)
    for _ in range(claimed >> 20):
        out.append(co.compress(zeros))
    out.append(co.compress(bytes(1024)))
    out.append(co.flush())
    path.write_bytes(ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", _control_tar()),
                          ("data.tar.gz", b"".join(out))]))
    return path


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_extended_header_bomb_is_refused_in_bounded_memory(kind, tmp_path):
    claimed = 480 << 20
    deb = _bomb_deb(tmp_path / "bomb.deb", kind, claimed)
    assert deb.stat().st_size < 4 << 20
    code = ("import sys\nfrom builder.sources import extract_deb\nfrom builder.errors import SourceError\n"
            f"try:\n    extract_deb({str(deb)!r}, {str(tmp_path / 'out')!r})\n"
            "except SourceError as e:\n    print(e)\n    sys.exit(2)\n")
    result = run_python(code)
    assert result.rc == 2, result.err
    assert f"{deb}: its data.tar.gz is corrupt (an extended header at offset 0 claims {claimed:,} bytes, " \
           f"more than the {MAX_TAR_HEADER_BYTES:,} any package needs)" in result.out
    assert not (tmp_path / "out").exists()


def test_gnu_sparse_member_is_refused(tmp_path):
    info = _ti("./sparse", tarfile.GNUTYPE_SPARSE)
    deb = _hand_deb(tmp_path / "sparse.deb", [info])
    with pytest.raises(SourceError, match="a GNU sparse member at offset 0, which no Debian package contains"):
        extract_deb(deb, tmp_path / "out")


def test_member_count_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(deb_reader, "MAX_DEB_MEMBERS", 5)
    ok = _hand_deb(tmp_path / "ok.deb", [(_ti(f"./f{i}"), b"x") for i in range(5)])
    extract_deb(ok, tmp_path / "ok")
    deb = _hand_deb(tmp_path / "many.deb", [(_ti(f"./f{i}"), b"x") for i in range(6)])
    with pytest.raises(SourceError, match=r"many.deb holds more than 5 files, more than any package"):
        extract_deb(deb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpacked_size_limit_is_checked_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(deb_reader, "MAX_DEB_UNPACKED_BYTES", 1000)
    deb = _hand_deb(tmp_path / "big.deb", [(_ti("./a"), bytes(600)), (_ti("./b"), bytes(600))])
    with pytest.raises(SourceError, match=r"member './b' \(600 bytes\) takes what the package unpacks beyond "
                                          r"1,000 bytes"):
        extract_deb(deb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_control_file_larger_than_the_limit(tmp_path):
    deb = tmp_path / "ctl.deb"
    big = CONTROL + b"X-Padding: " + b"x" * MAX_DEB_CONTROL_BYTES + b"\n"
    deb.write_bytes(ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", _control_tar(big)),
                         ("data.tar.gz", _control_tar())]))
    with pytest.raises(SourceError, match=f"its control file claims {len(big):,} bytes, more than the "
                                          f"{MAX_DEB_CONTROL_BYTES:,}"):
        read_deb_control(deb)


def test_ar_member_count_is_bounded(tmp_path):
    deb = tmp_path / "members.deb"
    deb.write_bytes(ar_archive([("debian-binary", b"2.0\n")] + [(f"_sig{i}", b"") for i in range(64)]))
    with pytest.raises(SourceError, match="members.deb has more than 64 ar members"):
        extract_deb(deb, tmp_path / "out")
