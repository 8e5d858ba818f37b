"""The lock's snapshot archive: its syntax, its URL layout, and the fallback to it.

Every snapshot archive here is a local http.server on 127.0.0.1 (tests/builder/localarchive.py);
snapshot.debian.org itself is never contacted.  The fallback tests use a real DebianArchive and
real apt against a local "archive" serving sid's real signed index without any pool file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
from datetime import datetime
from pathlib import Path

import pytest

from blindbox.cli import main
from builder.errors import InputDigestMismatch, OfflineMiss, RecipeError, SourceError, SourceGone
from builder.lock import parse_lock
from builder.sources import ContentCache, DebianArchive, DebianPackage
from builder.sources.snapshot import Snapshot, fallback, fetch_deb
from tests import realinputs
from tests.builder.localarchive import serve, sid_archive_routes, snapshot_routes

REPO = Path(__file__).resolve().parents[2]
TS = "20261117T000000Z"
DEB = b"!<arch>\nnot really a package, but bytes with a pinned sha256\n"
POOL = "pool/main/e/edk2/ovmf-amdsev_2026.05+ds-1_all.deb"


def _pkg(data: bytes = DEB, version: str = "2026.05+ds-1", filename: str = POOL) -> DebianPackage:
    return DebianPackage(name="ovmf-amdsev", version=version, arch="all", suite="sid", filename=filename,
                         size=len(data), sha256=hashlib.sha256(data).hexdigest())


# --------------------------------------------------------------------------- syntax and layout

def test_urls_follow_the_snapshot_layout_and_the_security_archive():
    snap = Snapshot("https://snapshot.debian.org/", TS)
    assert snap.base == "https://snapshot.debian.org"
    assert snap.url(POOL) == f"https://snapshot.debian.org/archive/debian/{TS}/{POOL}"
    kernel = "pool/updates/main/l/linux-signed-amd64/linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb"
    assert snap.url(kernel) == f"https://snapshot.debian.org/archive/debian-security/{TS}/{kernel}"
    assert Snapshot.parse(f"https://snapshot.debian.org@{TS}") == snap


@pytest.mark.parametrize("base, stamp, words", [
    ("https://snapshot.debian.org", "2026-11-17", "is not of the form YYYYMMDDTHHMMSSZ"),
    ("https://snapshot.debian.org", "20261317T000000Z", "is not of the form YYYYMMDDTHHMMSSZ"),
    ("ftp://snapshot.debian.org", TS, "is not an https:// or http:// URL"),
    ("https://snapshot.debian.org/?x=1", TS, "is not an https:// or http:// URL"),
])
def test_bad_snapshot_values_are_refused(base, stamp, words):
    with pytest.raises(SourceError, match=words):
        Snapshot(base, stamp)


def _strptime_accepts(stamp: str) -> bool:
    try:
        datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")
        return True
    except ValueError:
        return False


def test_timestamps_are_accepted_exactly_where_strptime_accepts_them():
    # the check reads the digits by position; strptime stays the definition of a valid timestamp
    stamps = [f"{y}{mo}{d}T{h}{mi}{s}Z" for y in ("0000", "0001", "1970", "2024", "2026", "9999")
              for mo in ("00", "01", "02", "09", "10", "12", "13", "20", "99") for d in ("00", "01", "28", "29", "30",
                                                                                        "31", "32", "99")
              for h in ("00", "23", "24", "99") for mi in ("00", "59", "60") for s in ("00", "59", "60", "61")]
    stamps += ["\u0662\u0660\u0662\u0666" + "1117T000000Z",                      # Arabic-Indic digits in the year
               "2026" + "\u0661\u0661" + "17T000000Z", "20261117T" + "\u0661\u0665" + "0000Z",
               "２０２６１１１７Ｔ００００００Ｚ"]
    accepted = 0
    for stamp in stamps:
        ok = _strptime_accepts(stamp)
        accepted += ok
        if ok:
            assert Snapshot("https://snapshot.debian.org", stamp).timestamp == stamp
        else:
            with pytest.raises(SourceError, match="is not of the form YYYYMMDDTHHMMSSZ"):
                Snapshot("https://snapshot.debian.org", stamp)
    assert 0 < accepted < len(stamps)


def test_pool_path_outside_the_pool_is_refused():
    with pytest.raises(SourceError, match="is not a pool path of a .deb file"):
        Snapshot("https://s.example", TS).url("pool/../../etc/passwd.deb")


def _hello_lock_doc() -> dict:
    return json.loads((REPO / "recipes" / "hello.lock").read_bytes())


def test_lock_snapshot_round_trips_and_a_lock_without_one_is_unchanged(tmp_path):
    doc = _hello_lock_doc()
    doc.pop("snapshot", None)
    plain = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    lock = parse_lock(plain, tmp_path / "x.lock")
    assert lock.snapshot is None and lock.to_json() == plain      # additive: old locks keep their bytes
    keys = list(doc)
    doc = {k: doc[k] for k in keys[:3]} | {"snapshot": {"base": "https://snapshot.debian.org", "timestamp": TS},
                                           "inputs": doc["inputs"]}
    data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    lock = parse_lock(data, tmp_path / "x.lock")
    assert lock.snapshot == Snapshot("https://snapshot.debian.org", TS)
    assert lock.to_json() == data


def test_hello_lock_names_debians_snapshot_archive():
    snap = parse_lock((REPO / "recipes" / "hello.lock").read_bytes(), REPO / "recipes" / "hello.lock").snapshot
    assert snap is not None and snap.base == "https://snapshot.debian.org"


@pytest.mark.parametrize("value, words", [
    ({"base": "https://snapshot.debian.org"}, "must be a mapping with exactly 'base' and 'timestamp'"),
    ({"base": "https://snapshot.debian.org", "timestamp": "yesterday"}, "is not of the form YYYYMMDDTHHMMSSZ"),
    ("https://snapshot.debian.org", "must be a mapping"),
])
def test_bad_lock_snapshot_is_refused_with_exit_2(tmp_path, capsys, value, words):
    shutil.copy(REPO / "recipes" / "hello.yaml", tmp_path / "hello.yaml")
    doc = _hello_lock_doc()
    doc["snapshot"] = value
    (tmp_path / "hello.lock").write_text(json.dumps(doc))
    with pytest.raises(RecipeError, match=words):
        parse_lock((tmp_path / "hello.lock").read_bytes(), tmp_path / "hello.lock")
    assert main(["build", str(tmp_path / "hello.yaml"), "--out", str(tmp_path / "out"), "--offline"]) == 2
    err = capsys.readouterr().err
    assert "'snapshot'" in err and words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_lock_snapshot_option_records_it_and_refuses_a_bad_one(tmp_path, capsys):
    shutil.copy(REPO / "recipes" / "hello.yaml", tmp_path / "hello.yaml")
    doc = _hello_lock_doc()
    doc.pop("snapshot", None)
    (tmp_path / "hello.lock").write_text(json.dumps(doc, indent=2) + "\n")
    before = (tmp_path / "hello.lock").read_bytes()
    assert main(["lock", str(tmp_path / "hello.yaml"), "--offline", "--snapshot", "snapshot.debian.org"]) == 2
    assert "is not of the form URL@TIMESTAMP" in capsys.readouterr().err
    assert (tmp_path / "hello.lock").read_bytes() == before
    assert main(["lock", str(tmp_path / "hello.yaml"), "--offline", "--snapshot",
                 f"http://127.0.0.1:9/snap@{TS}"]) == 0        # the pins are kept: no lookup is needed
    assert "records the snapshot archive http://127.0.0.1:9/snap@" in capsys.readouterr().out
    after = json.loads((tmp_path / "hello.lock").read_bytes())
    assert after["snapshot"] == {"base": "http://127.0.0.1:9/snap", "timestamp": TS}
    assert after["inputs"] == doc["inputs"]


# --------------------------------------------------------------------------- fetching from a snapshot

def test_fetch_deb_verifies_against_the_lock_and_never_asks_for_release_files(tmp_path):
    pkg = _pkg()
    with serve(snapshot_routes(TS, {POOL: DEB})) as snap:
        path = fetch_deb(Snapshot(snap.base, TS), pkg, ContentCache(tmp_path / "c"))
        assert path.read_bytes() == DEB
        assert snap.requests == [f"/archive/debian/{TS}/{POOL}"]
        fetch_deb(Snapshot(snap.base, TS), pkg, ContentCache(tmp_path / "c"))    # cached: no request
        assert len(snap.requests) == 1


def test_fetch_deb_refuses_other_bytes_and_caches_nothing(tmp_path):
    pkg = _pkg()
    cache = ContentCache(tmp_path / "c")
    with serve(snapshot_routes(TS, {POOL: DEB + b"tampered"})) as snap:
        with pytest.raises(InputDigestMismatch, match="The snapshot archive served .* but the lock pins"):
            fetch_deb(Snapshot(snap.base, TS), pkg, cache)
    assert cache.path(pkg.sha256) is None


def test_fetch_deb_missing_at_the_snapshot_is_source_gone(tmp_path):
    with serve({}) as snap:
        with pytest.raises(SourceGone, match="answered HTTP 404"):
            fetch_deb(Snapshot(snap.base, TS), _pkg(), ContentCache(tmp_path / "c"))


# --------------------------------------------------------------------------- the archive falls back

@pytest.fixture
def sid_archive():
    with serve(sid_archive_routes()) as served:
        yield served


def _local_archive(tmp_path: Path, served, **kw) -> DebianArchive:
    return DebianArchive(cache=ContentCache(tmp_path / "cache"), apt_dir=tmp_path / "apt", allow_stale=("sid",),
                         mirror=f"{served.base}/debian", **kw)


@pytest.mark.network
def test_a_version_the_archive_no_longer_lists_comes_from_the_snapshot(tmp_path, sid_archive):
    pkg = _pkg()
    served_now = [v for v, _ in realinputs.archive().served_versions("ovmf-amdsev", "sid")]
    assert pkg.version not in served_now                    # the archive really does not list it
    archive = _local_archive(tmp_path, sid_archive)
    with pytest.raises(SourceGone, match="is no longer served by Debian sid"):
        archive.download(pkg)                               # no snapshot named: the old message
    with serve(snapshot_routes(TS, {POOL: DEB})) as snap:
        archive.fallback = fallback(Snapshot(snap.base, TS), archive.cache)
        path = archive.download(pkg)
        assert path.read_bytes() == DEB and archive.fetched == [pkg]
        assert snap.requests == [f"/archive/debian/{TS}/{POOL}"]
    assert "/debian/dists/sid/InRelease" in sid_archive.requests


@pytest.mark.network
def test_a_file_the_archive_lists_but_no_longer_serves_comes_from_the_snapshot(tmp_path, sid_archive):
    real = realinputs.ovmf_amdsev()[1]
    deb = realinputs.archive().download(real).read_bytes()
    archive = _local_archive(tmp_path, sid_archive)
    with serve(snapshot_routes(TS, {real.filename: deb})) as snap:
        archive.fallback = fallback(Snapshot(snap.base, TS), archive.cache)
        assert archive.download(real).read_bytes() == deb
        assert snap.requests == [f"/archive/debian/{TS}/{real.filename}"]
    asked = [urllib.parse.unquote(r) for r in sid_archive.requests]
    assert f"/debian/{real.filename}" in asked                      # apt asked the archive first: 404


@pytest.mark.network
def test_snapshot_without_the_file_or_with_other_bytes(tmp_path, sid_archive):
    pkg = _pkg()
    archive = _local_archive(tmp_path, sid_archive)
    with serve({}) as snap:
        archive.fallback = fallback(Snapshot(snap.base, TS), archive.cache)
        with pytest.raises(SourceGone, match="the lock's snapshot archive did not serve it either"):
            archive.download(pkg)
    with serve(snapshot_routes(TS, {POOL: b"other bytes"})) as snap:
        archive.fallback = fallback(Snapshot(snap.base, TS), archive.cache)
        with pytest.raises(InputDigestMismatch, match="but the lock pins"):
            archive.download(pkg)


def test_offline_never_asks_the_snapshot(tmp_path):
    archive = DebianArchive(cache=ContentCache(tmp_path / "cache"), apt_dir=tmp_path / "apt", offline=True)
    with serve(snapshot_routes(TS, {POOL: DEB})) as snap:
        archive.fallback = fallback(Snapshot(snap.base, TS), archive.cache)
        with pytest.raises(OfflineMiss):
            archive.download(_pkg())
    assert snap.requests == []


def test_a_suite_gone_from_the_mirror_falls_back_to_the_snapshot(tmp_path):
    """The mirror serves nothing at all (an old release moved away): apt-get update answers 404 for the
    Release file, which is a package no longer served, so the snapshot serves the pinned file."""
    with serve({}) as gone, serve(snapshot_routes(TS, {POOL: DEB})) as snap:
        archive = _local_archive(tmp_path, gone)
        with pytest.raises(SourceGone, match="The Debian archive no longer serves the suite sid"):
            archive.download(_pkg())
        archive.fallback = fallback(Snapshot(snap.base, TS), archive.cache)
        assert archive.download(_pkg()).read_bytes() == DEB
        assert snap.requests == [f"/archive/debian/{TS}/{POOL}"]
