"""Debian packages as build inputs, through a private apt configuration.

Debian packages come through a *private* apt configuration (:class:`DebianArchive`):
one small apt tree per suite and architecture under ``<root>/apt/``, with its own
sources list, package lists, pkgcache, empty dpkg status, and its own (empty)
``apt.conf.d`` and ``preferences.d``.  Every apt call runs with ``APT_CONFIG`` pointing
at that tree's ``apt.conf``, so nothing from the host's ``/etc/apt`` (sources, pins,
``Acquire::Check-Valid-Until "false"`` and the like) leaks in, and the host's apt state
is never touched.  Release signatures are checked against the Debian archive keyring
(``/usr/share/keyrings/debian-archive-keyring.gpg``) always.

Suites and what "the suite serves now" means:

* ``bookworm`` = bookworm + bookworm-updates + bookworm-security (stable kernels are
  replaced in the security suite, e.g. linux-image-amd64 6.1.192-2 there against
  6.1.176-1 in bookworm itself on 2026-11-26);
* ``trixie`` = trixie + trixie-updates + trixie-security;
* ``sid``.

Stale Release files (observed on 2026-11-26 with the archive reachable here, which is a
snapshot that lags): sid's InRelease is dated 2026-10-30 with Valid-Until 2026-11-06,
and apt refuses it ("Release file ... is expired (invalid since 20d 8h ...)").  Trixie
and bookworm themselves carry no Valid-Until; trixie-updates, trixie-security and
bookworm-security are valid only until 2026-12-02, so they will expire too if the snapshot
does not move.  This module never turns the freshness check off by itself: an expired
suite raises :class:`~builder.errors.StaleSuite`, and a caller that accepts the risk
names the suite in ``allow_stale`` -- that suite's sources then carry
``Check-Valid-Until: no`` (apt's ``[check-valid-until=no]``); signatures stay checked.
The same check is repeated in Python on the cached Release files, so package lists that
were fetched under ``allow_stale`` are not used silently by an archive without it.

This module may use the cache (:mod:`.cache`) and the .deb reader (:mod:`.deb`); it must
not depend on the URL inputs (:mod:`.remote`) nor on the command line (``blindbox.cli``).
Nothing here prints or exits; every failure is a :class:`~builder.errors.SourceError`
(or :class:`~builder.errors.ToolMissing`) with one sentence saying what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from blindbox.files import write_atomic

from .. import progress
from ..errors import InputDigestMismatch, OfflineMiss, SourceError, SourceGone, StaleSuite, ToolMissing
from .cache import ContentCache, _check_sha256, _flock

if TYPE_CHECKING:  # imported where apt runs: a build that finds its bundle current runs no apt
    import subprocess

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"


@dataclass(frozen=True)
class DebianPackage:
    """One exact binary package, as pinned in a lock file."""

    name: str
    version: str
    arch: str        #: the package's Architecture field ("amd64" or "all")
    suite: str       #: the suite family it was resolved in ("bookworm", "trixie", "sid")
    filename: str    #: pool path in the archive
    size: int
    sha256: str

    def __post_init__(self):
        object.__setattr__(self, "sha256", _check_sha256(self.sha256, f"{self.name} {self.version}"))

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.suite}, {self.arch})"

    @property
    def source(self) -> str:
        return f"debian:{self.suite}/{self.name}={self.version}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DebianPackage:
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict):
            raise SourceError(f"A Debian package entry in the lock file is a {type(data).__name__}, not "
                              f"a mapping with {', '.join(fields)}; regenerate it with `blindbox lock`.")
        missing = [k for k in fields if k not in data]
        unknown = sorted(set(data) - set(fields))
        if missing or unknown:
            what = "; ".join(x for x in (missing and f"missing {', '.join(missing)}",
                                         unknown and f"unknown {', '.join(unknown)}") if x)
            raise SourceError(f"The Debian package entry {data.get('name', '?')} in the lock file is "
                              f"malformed ({what}); regenerate it with `blindbox lock`.")
        if not isinstance(data["size"], int) or isinstance(data["size"], bool) or \
                not all(isinstance(data[k], str) for k in fields if k != "size"):
            raise SourceError(f"The Debian package entry {data.get('name', '?')} in the lock file has a "
                              f"field of the wrong type (size is an integer, the rest are strings); "
                              f"regenerate it with `blindbox lock`.")
        return cls(**{k: data[k] for k in fields})


@dataclass(frozen=True)
class SuiteSources:
    """Which archive suites make up one suite family."""

    name: str
    suites: tuple[str, ...]            #: on the main mirror
    security: tuple[str, ...] = ()     #: on the security mirror


SUITES: dict[str, SuiteSources] = {
    "bookworm": SuiteSources("bookworm", ("bookworm", "bookworm-updates"), ("bookworm-security",)),
    "trixie": SuiteSources("trixie", ("trixie", "trixie-updates"), ("trixie-security",)),
    "sid": SuiteSources("sid", ("sid",)),
}

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_VERSION_RE = re.compile(r"[A-Za-z0-9.+~:-]+")
_ARCH_RE = re.compile(r"[a-z0-9]+")
_EXPIRED_RE = re.compile(r"Release file for (\S+) is expired \(invalid since ([^)]*)\)")


@dataclass(frozen=True)
class _Tree:
    """One private apt configuration: a suite family on one architecture."""

    suite: str
    arch: str
    dir: Path

    @property
    def conf(self) -> Path:
        return self.dir / "apt.conf"

    @property
    def lists(self) -> Path:
        return self.dir / "lists"

    @property
    def stamp(self) -> Path:
        return self.dir / "last-update.json"

    def lock(self, *, shared: bool = False) -> contextlib.AbstractContextManager:
        """Exclusive while ``apt-get update`` rewrites the lists; shared for readers.

        The lock file lives in the tree itself, so every archive object using this tree
        (whatever its content cache) takes the same lock.
        """
        return _flock(self.dir / "blindbox.lock", shared=shared)

    def sources_dir(self, stale_ok: bool) -> Path:
        return self.dir / "etc" / ("sources-stale.d" if stale_ok else "sources.d")


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    write_atomic(path, text.encode(), what="apt configuration file", mode=0o644)


class DebianArchive:
    """Resolve, download and unpack exact Debian binary packages through private apt trees.

    ``offline``: never touch the network; answer from the cached package lists and the
    content cache, or raise :class:`OfflineMiss`.  ``allow_stale``: suite families
    (``"sid"``) whose expired Release files are accepted (see the module docstring).
    ``max_release_age``: seconds; refuse Release files older than this even when they
    carry no Valid-Until (apt's ``Acquire::Max-ValidTime``).  ``update_interval``: how
    old the cached package lists may get before a lookup refreshes them.
    """

    #: a lookup that misses refreshes the lists unless they are younger than this
    MISS_REFRESH_AFTER = 300.0

    def __init__(self, *, cache: ContentCache | None = None, offline: bool = False,
                 allow_stale: Iterable[str] = (), mirror: str | None = None,
                 security_mirror: str | None = None, apt_dir: os.PathLike | str | None = None,
                 update_interval: float = 6 * 3600, max_release_age: float | None = None):
        self.cache = cache if cache is not None else ContentCache()
        self.offline = offline
        if isinstance(allow_stale, str):
            allow_stale = [allow_stale]
        self.allow_stale = frozenset(allow_stale)
        for s in sorted(self.allow_stale):
            self._suite(s)
        self.mirror = (mirror or os.environ.get("BLINDBOX_DEBIAN_MIRROR") or DEFAULT_MIRROR).rstrip("/")
        self.security_mirror = (security_mirror or os.environ.get("BLINDBOX_DEBIAN_SECURITY_MIRROR")
                                or DEFAULT_SECURITY_MIRROR).rstrip("/")
        self.apt_dir = Path(apt_dir) if apt_dir is not None else self.cache.root / "apt"
        self.update_interval = update_interval
        self.max_release_age = max_release_age
        #: packages this object downloaded from the network (cache hits are not listed)
        self.fetched: list[DebianPackage] = []
        #: suite families whose lists this object refreshed with ``apt-get update``
        self.updated: list[str] = []
        #: where a pinned package the archive no longer serves is fetched from instead (e.g. the
        #: lock's snapshot archive, :func:`.snapshot.fallback`): ``fallback(pkg) -> verified path``
        self.fallback: Callable[[DebianPackage], Path] | None = None

    def __repr__(self) -> str:
        return (f"DebianArchive(cache={self.cache!r}, offline={self.offline}, "
                f"allow_stale={sorted(self.allow_stale)})")

    # ------------------------------------------------------------------ apt trees
    @staticmethod
    def _suite(suite: str) -> SuiteSources:
        try:
            return SUITES[suite]
        except (KeyError, TypeError):
            raise SourceError(f"Unknown Debian suite {suite!r}; use one of {', '.join(SUITES)} "
                              f"(codenames, not stable/unstable).", source=f"debian:{suite}") from None

    def _tree(self, suite: str, arch: str) -> _Tree:
        spec = self._suite(suite)
        if not isinstance(arch, str) or not _ARCH_RE.fullmatch(arch) or arch == "all":
            raise SourceError(f"Unsupported Debian architecture {arch!r}; give a machine architecture "
                              f"such as amd64 (packages of architecture all are found under it).",
                              source=f"debian:{suite}")
        if not DEBIAN_KEYRING.is_file():
            raise ToolMissing("debian-archive-keyring.gpg", "debian-archive-keyring",
                              f"The Debian archive keyring {DEBIAN_KEYRING} is missing, so Release "
                              f"signatures cannot be checked; install the Debian package "
                              f"debian-archive-keyring and run the command again.")
        name = f"{suite}-{arch}"
        if (self.mirror, self.security_mirror) != (DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR):
            tag = hashlib.sha256(f"{self.mirror}\n{self.security_mirror}".encode()).hexdigest()[:10]
            name += f"-{tag}"
        tree = _Tree(suite, arch, self.apt_dir / name)
        etc = tree.dir / "etc"
        for d in (etc / "apt.conf.d", etc / "preferences.d", etc / "trusted.gpg.d", etc / "auth.conf.d",
                  tree.sources_dir(False), tree.sources_dir(True), tree.lists / "partial",
                  tree.dir / "cache" / "archives" / "partial", tree.dir / "state", tree.dir / "log"):
            d.mkdir(parents=True, exist_ok=True)
        for f in (etc / "apt.conf.main", etc / "preferences", etc / "sources.list",
                  tree.dir / "state" / "status"):
            if not f.exists():
                f.touch()
        for stale_ok in (False, True):
            _write_if_changed(tree.sources_dir(stale_ok) / "debian.sources",
                              self._sources_text(spec, arch, stale_ok))
        _write_if_changed(tree.conf, self._conf_text(tree))
        return tree

    def _sources_text(self, spec: SuiteSources, arch: str, stale_ok: bool) -> str:
        blocks = []
        for uri, suites in ((self.mirror, spec.suites), (self.security_mirror, spec.security)):
            if not suites:
                continue
            lines = ["Types: deb", f"URIs: {uri}", f"Suites: {' '.join(suites)}", "Components: main",
                     f"Architectures: {arch}", f"Signed-By: {DEBIAN_KEYRING}"]
            if stale_ok:
                # the explicit, per-suite choice made through allow_stale; signatures stay on
                lines.append("Check-Valid-Until: no")
            blocks.append("\n".join(lines) + "\n")
        header = ("# Generated by blindbox (builder.sources); rewritten on every run.\n"
                  + ("# allow_stale: this suite's expired Release files are accepted.\n" if stale_ok else ""))
        return header + "\n".join(blocks)

    def _conf_text(self, tree: _Tree) -> str:
        d, etc = tree.dir, tree.dir / "etc"
        q = lambda p: json.dumps(str(p))  # noqa: E731 - apt.conf strings are double-quoted
        lines = [
            "// Generated by blindbox (builder.sources): a private apt configuration.",
            "// Every directory below is ours, so the host's /etc/apt is never read.",
            'Dir "/";',
            f"Dir::Etc {q(etc)};",
            f"Dir::Etc::Main {q(etc / 'apt.conf.main')};",
            f"Dir::Etc::Parts {q(etc / 'apt.conf.d')};",
            f"Dir::Etc::SourceList {q(etc / 'sources.list')};",
            f"Dir::Etc::SourceParts {q(tree.sources_dir(False))};",
            f"Dir::Etc::Preferences {q(etc / 'preferences')};",
            f"Dir::Etc::PreferencesParts {q(etc / 'preferences.d')};",
            f"Dir::Etc::Trusted {q(etc / 'trusted.gpg')};",
            f"Dir::Etc::TrustedParts {q(etc / 'trusted.gpg.d')};",
            f"Dir::Etc::netrc {q(etc / 'auth.conf')};",
            f"Dir::Etc::netrcparts {q(etc / 'auth.conf.d')};",
            f"Dir::State {q(d / 'state')};",
            f"Dir::State::Lists {q(tree.lists)};",
            f"Dir::State::status {q(d / 'state' / 'status')};",
            f"Dir::Cache {q(d / 'cache')};",
            f"Dir::Cache::Archives {q(d / 'cache' / 'archives')};",
            'Dir::Cache::srcpkgcache "";',
            f"Dir::Log {q(d / 'log')};",
            f"APT::Architecture {q(tree.arch)};",
            f"APT::Architectures {{ {q(tree.arch)}; }};",
            'APT::Get::AllowUnauthenticated "false";',
            'Acquire::AllowInsecureRepositories "false";',
            'Acquire::AllowDowngradeToInsecureRepositories "false";',
            '// Freshness is checked; only allow_stale turns it off, per suite, in the sources.',
            'Acquire::Check-Valid-Until "true";',
            'Acquire::Check-Date "true";',
            'Acquire::Languages "none";',
            'Acquire::GzipIndexes "false";',
            'Acquire::Retries "3";',
            'Acquire::http::Timeout "60";',
            'Acquire::https::Timeout "60";',
        ]
        if os.geteuid() == 0:
            # Our cache usually lives in root's 0700 home, which apt's _apt sandbox user
            # cannot enter; everything fetched is verified by signature and sha256 anyway.
            lines.append('APT::Sandbox::User "root";')
        return "\n".join(lines) + "\n"

    def apt_config(self, suite: str, arch: str = "amd64") -> Path:
        """The generated ``apt.conf`` of a suite family (for inspection and tests)."""
        return self._tree(suite, arch).conf

    def apt_config_dump(self, suite: str, arch: str = "amd64") -> str:
        """``apt-config dump`` as every apt call of this archive sees it (for debugging)."""
        tree = self._tree(suite, arch)
        proc = self._apt(tree, ["apt-config", "dump"])
        if proc.returncode != 0:
            raise SourceError(f"apt-config dump failed for the private apt tree {tree.dir} "
                              f"({_last_lines(proc.stderr)}); delete that directory to regenerate it.",
                              source=f"debian:{suite}")
        return proc.stdout

    def _apt_env(self, tree: _Tree) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APT_", "LC_", "LANG"))}
        env.update(APT_CONFIG=str(tree.conf), LC_ALL="C", LANGUAGE="")
        return env

    def _apt(self, tree: _Tree, argv: list[str], *, cwd: Path | None = None,
             timeout: float = 3600, watch: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
        exe = shutil.which(argv[0])
        if exe is None:
            raise ToolMissing(argv[0], "apt")
        stale_ok = tree.suite in self.allow_stale
        cmd = [exe, "-o", f"Dir::Etc::SourceParts={tree.sources_dir(stale_ok)}"]
        if self.max_release_age is not None:
            cmd += ["-o", f"Acquire::Max-ValidTime={int(self.max_release_age)}"]
        cmd += argv[1:]
        import subprocess

        try:
            if watch is not None:   # called a few times a second while apt runs (download progress)
                return _run_watched(cmd, cwd, self._apt_env(tree), timeout, watch)
            return subprocess.run(cmd, cwd=cwd, env=self._apt_env(tree), capture_output=True,
                                  text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SourceError(f"`{' '.join(argv)}` for Debian {tree.suite} did not finish within "
                              f"{timeout:.0f} s; check the network and try again.",
                              source=f"debian:{tree.suite}") from None

    # ------------------------------------------------------------------ package lists
    def _lists_complete(self, tree: _Tree) -> bool:
        spec = self._suite(tree.suite)
        names = {p.name for p in tree.lists.glob("*")}
        # apt moves a source's Release and its indexes into lists/ together, on success
        return all(any(n.endswith((f"_dists_{suite}_InRelease", f"_dists_{suite}_Release")) for n in names)
                   for suite in spec.suites + spec.security)

    def _stamp_age(self, tree: _Tree) -> float:
        try:
            data = json.loads(tree.stamp.read_text())
            if data.get("sources") != self._sources_fingerprint(tree):
                return float("inf")
            return max(0.0, time.time() - float(data["time"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return float("inf")

    def _sources_fingerprint(self, tree: _Tree) -> str:
        return hashlib.sha256((tree.sources_dir(False) / "debian.sources").read_bytes()).hexdigest()

    def _update(self, tree: _Tree, *, min_age: float) -> bool:
        """``apt-get update`` unless the lists are younger than ``min_age``; True if it ran.

        Also skipped when another process refreshed the lists after this call started
        (it waited for that process's lock), so parallel workers update once.
        """
        if self.offline:
            raise OfflineMiss(f"The Debian {tree.suite} package lists in {tree.lists} are missing or "
                              f"incomplete and offline mode forbids fetching them; run once without "
                              f"--offline.", source=f"debian:{tree.suite}")
        started = time.time()
        with tree.lock():
            age = self._stamp_age(tree)
            if (age < min_age or age < time.time() - started) and self._lists_complete(tree):
                return False
            progress.current().task(f"resolving {tree.suite} package lists")
            proc = self._apt(tree, ["apt-get", "-q", "--error-on=any", "update"])
            if proc.returncode != 0:
                raise self._update_error(tree, proc)
            tmp = tree.stamp.with_suffix(".tmp")
            tmp.write_text(json.dumps({"time": time.time(),
                                       "sources": self._sources_fingerprint(tree)}))
            os.replace(tmp, tree.stamp)
        self.updated.append(tree.suite)
        return True

    def _stale_advice(self, suite: str) -> str:
        return (f"if you accept package lists that may lack security updates, allow it explicitly for "
                f"this suite with --allow-stale {suite} (blindbox build, lock and check-repro; blindbox "
                f"fetch --suite {suite} takes --allow-stale alone; allow_stale=[\"{suite}\"] in Python); "
                f"apt's signature checks stay on")

    def _update_error(self, tree: _Tree, proc: subprocess.CompletedProcess) -> SourceError:
        out = (proc.stderr + "\n" + proc.stdout).strip()
        src = f"debian:{tree.suite}"
        m = _EXPIRED_RE.search(out)
        if m:
            return StaleSuite(f"apt refuses Debian {tree.suite}: the Release file {m.group(1)} is expired "
                              f"(invalid since {m.group(2)}), which means the archive reachable from here "
                              f"lags behind; {self._stale_advice(tree.suite)}.",
                              source=src, suite=tree.suite)
        if re.search(r"\b404\b", out) and "does not have a Release file" in out:
            return SourceGone(f"The Debian archive no longer serves the suite {tree.suite} "
                              f"({_last_lines(out, 1)}); pin inputs of a served suite, or name a snapshot archive "
                              f"in the lock (docs/rebuilding.md).", source=src)
        if "is not valid yet" in out:
            return SourceError(f"apt refuses Debian {tree.suite} because its Release file is dated in the "
                               f"future; check this machine's clock.", source=src)
        if any(s in out for s in ("NO_PUBKEY", "EXPKEYSIG", "signatures couldn't be verified",
                                  "is not signed", "BADSIG")):
            return SourceError(f"apt could not verify the signature of Debian {tree.suite}'s Release file "
                               f"with {DEBIAN_KEYRING} ({_last_lines(out)}); update the Debian package "
                               f"debian-archive-keyring, or check that the mirror is genuine.", source=src)
        return SourceError(f"apt-get update for Debian {tree.suite} failed ({_last_lines(out)}); check the "
                           f"network and the mirror {self.mirror}, or use --offline with a filled "
                           f"cache.", source=src)

    def _release_files(self, tree: _Tree) -> list[tuple[str, Path]]:
        spec = self._suite(tree.suite)
        out = []
        for suite in spec.suites + spec.security:
            for p in sorted(tree.lists.glob(f"*_dists_{suite}_InRelease")) + \
                    sorted(tree.lists.glob(f"*_dists_{suite}_Release")):
                out.append((suite, p))
        return out

    def _expired_release(self, tree: _Tree) -> str | None:
        """A sentence naming the first cached Release file that is no longer valid, or None."""
        now = _dt.datetime.now(_dt.timezone.utc)
        for suite, path in self._release_files(tree):
            fields = _release_fields(path)
            ends = []
            if "Valid-Until" in fields:
                ends.append(("Valid-Until", _parse_date(fields["Valid-Until"])))
            if self.max_release_age is not None and "Date" in fields:
                date = _parse_date(fields["Date"])
                if date is not None:
                    ends.append(("max_release_age",
                                 date + _dt.timedelta(seconds=self.max_release_age)))
            for why, end in ends:
                if end is not None and now > end:
                    return (f"the cached Release file of {suite} (dated {fields.get('Date', '?')}) expired "
                            f"on {end:%Y-%m-%d %H:%M} UTC ({why})")
        return None

    def _ensure_lists(self, tree: _Tree) -> None:
        refreshed = False
        if not self._lists_complete(tree):
            refreshed = self._update(tree, min_age=0.0)
        elif not self.offline and self._stamp_age(tree) > self.update_interval:
            refreshed = self._update(tree, min_age=self.update_interval)
        if tree.suite in self.allow_stale:
            return
        expired = self._expired_release(tree)
        if expired and not self.offline and not refreshed:
            self._update(tree, min_age=0.0)  # apt raises StaleSuite if it is still expired
            expired = self._expired_release(tree)
        if expired:
            raise StaleSuite(f"Debian {tree.suite} cannot be used: {expired}"
                             f"{' and offline mode cannot refresh it' if self.offline else ''}; "
                             f"{self._stale_advice(tree.suite)}.",
                             source=f"debian:{tree.suite}", suite=tree.suite)

    # ------------------------------------------------------------------ queries
    def _show(self, tree: _Tree, name: str, version: str) -> list[dict[str, str]]:
        with tree.lock(shared=True):
            proc = self._apt(tree, ["apt-cache", "show", "--no-all-versions", f"{name}={version}"])
        if proc.returncode != 0:
            if "No packages found" in proc.stderr or "Unable to locate" in proc.stderr \
                    or "Can't select" in proc.stderr or not proc.stderr.strip():
                return []
            raise SourceError(f"apt-cache show {name}={version} failed for Debian {tree.suite} "
                              f"({_last_lines(proc.stderr)}).", source=f"debian:{tree.suite}/{name}")
        from .deb import _parse_stanzas   # here: .deb brings tarfile and lzma, which a current build never needs

        return [s for s in _parse_stanzas(proc.stdout) if s.get("Package") == name]

    def _candidate(self, tree: _Tree, name: str) -> str | None:
        with tree.lock(shared=True):
            proc = self._apt(tree, ["apt-cache", "policy", name])
        m = re.search(r"^\s*Candidate:\s*(\S+)\s*$", proc.stdout, re.M)
        if proc.returncode != 0 or not m or m.group(1) == "(none)":
            return None
        return m.group(1)

    def served_versions(self, name: str, suite: str, arch: str = "amd64") -> list[tuple[str, str]]:
        """``[(version, archive suite), ...]`` that the suite family serves for ``name``."""
        tree = self._tree(suite, arch)
        self._ensure_lists(tree)
        return self._madison(tree, name)

    def _madison(self, tree: _Tree, name: str) -> list[tuple[str, str]]:
        with tree.lock(shared=True):
            proc = self._apt(tree, ["apt-cache", "madison", name])
        out = []
        for line in proc.stdout.splitlines():
            cols = [c.strip() for c in line.split("|")]
            if len(cols) == 3 and cols[0] == name:
                where = cols[2].split()
                out.append((cols[1], where[1].split("/")[0] if len(where) > 1 else "?"))
        return out

    def _lookup(self, tree: _Tree, name: str, version: str | None) -> DebianPackage | None:
        if version is None:
            version = self._candidate(tree, name)
            if version is None:
                return None
        stanzas = self._show(tree, name, version)
        if not stanzas:
            return None
        digests = {s.get("SHA256") for s in stanzas}
        if len(digests) != 1:
            raise SourceError(f"Debian {tree.suite} serves {name} {version} with different contents in "
                              f"different suites (sha256 {', '.join(sorted(map(str, digests)))}); pin the "
                              f"sha256 you reviewed.", source=f"debian:{tree.suite}/{name}={version}")
        s = stanzas[0]
        try:
            return DebianPackage(name=name, version=s["Version"], arch=s["Architecture"],
                                 suite=tree.suite, filename=s["Filename"], size=int(s["Size"]),
                                 sha256=s["SHA256"].lower())
        except (KeyError, ValueError, SourceError):
            raise SourceError(f"apt's record of {name} {version} in Debian {tree.suite} lacks a usable "
                              f"Version, Architecture, Filename, Size or SHA256 field; refresh the package "
                              f"lists by deleting {tree.lists}.",
                              source=f"debian:{tree.suite}/{name}={version}") from None

    def _gone(self, tree: _Tree, name: str, version: str) -> SourceError:
        src = f"debian:{tree.suite}/{name}={version}"
        if self.offline:
            return OfflineMiss(f"{name} {version} is not in the cache at {self.cache.root} nor in the cached "
                               f"Debian {tree.suite} package lists, and offline mode forbids looking it up; "
                               f"run once without --offline.", source=src)
        served = self._madison(tree, name)
        now = (f"it now serves {', '.join(v for v, _ in served)}" if served
               else "it serves no version of that package now")
        return SourceGone(f"{name} {version} is no longer served by Debian {tree.suite} ({now}) and is not in "
                          f"the cache at {self.cache.root}; run `blindbox lock --update RECIPE` to pin the "
                          f"current version; this changes the measurement.", source=src)

    def resolve(self, name: str, suite: str, version: str | None = None,
                arch: str = "amd64") -> DebianPackage:
        """The exact package ``name`` (at ``version``, or what ``suite`` serves now)."""
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise SourceError(f"{name!r} is not a valid Debian package name; check the recipe.",
                              source=f"debian:{suite}/{name}")
        if version is not None and (not isinstance(version, str) or not _VERSION_RE.fullmatch(version)):
            raise SourceError(f"{version!r} is not a valid Debian version for {name}; check the recipe "
                              f"or lock file.", source=f"debian:{suite}/{name}")
        tree = self._tree(suite, arch)
        self._ensure_lists(tree)
        pkg = self._lookup(tree, name, version)
        if pkg is None and not self.offline and self._update(tree, min_age=self.MISS_REFRESH_AFTER):
            pkg = self._lookup(tree, name, version)
        if pkg is not None:
            return pkg
        if version is not None:
            raise self._gone(tree, name, version)
        if self.offline:
            raise OfflineMiss(f"The cached Debian {tree.suite} package lists have no package {name} and "
                              f"offline mode forbids refreshing them; run once without --offline.",
                              source=f"debian:{suite}/{name}")
        raise SourceError(f"Debian {suite} ({arch}) has no package named {name} in main; check the name "
                          f"and the suite (`apt-cache search` helps).", source=f"debian:{suite}/{name}")

    @staticmethod
    def _tree_arch(pkg: DebianPackage) -> str:
        return "amd64" if pkg.arch == "all" else pkg.arch

    def download(self, pkg: DebianPackage) -> Path:
        """The .deb of ``pkg`` in the content cache, its sha256 verified.

        A cached copy is used without any apt call (also offline).  Otherwise apt
        downloads it into a scratch directory and it is checked against ``pkg.sha256``.
        """
        hit = self.cache.path(pkg.sha256)
        if hit is not None:
            return hit
        if self.offline:
            raise OfflineMiss(f"{pkg} (sha256 {pkg.sha256}) is not in the cache at {self.cache.root} and "
                              f"offline mode forbids downloading it; run once without --offline.",
                              source=pkg.source)
        try:
            path = self._download(pkg)
        except SourceGone as gone:
            if self.fallback is None:
                raise
            try:
                path = self.fallback(pkg)
            except InputDigestMismatch:
                raise
            except SourceError as e:
                raise SourceGone(f"{str(gone).rstrip('.')}; the lock's snapshot archive did not serve it either "
                                 f"({str(e).rstrip('.')}).", source=pkg.source) from None
            self.fetched.append(pkg)
        return path

    def _download(self, pkg: DebianPackage) -> Path:
        """``download`` from the archive through apt; SourceGone when it no longer serves ``pkg``."""
        with self.cache.lock(f"fetch-{pkg.sha256}"):
            hit = self.cache.path(pkg.sha256)
            if hit is not None:
                return hit
            tree = self._tree(pkg.suite, self._tree_arch(pkg))
            self._ensure_lists(tree)
            stanzas = self._show(tree, pkg.name, pkg.version)
            if not stanzas and self._update(tree, min_age=self.MISS_REFRESH_AFTER):
                stanzas = self._show(tree, pkg.name, pkg.version)
            if not stanzas:
                raise self._gone(tree, pkg.name, pkg.version)
            served = {s.get("SHA256", "").lower() for s in stanzas}
            if pkg.sha256 not in served:
                actual = sorted(served)[0]
                raise InputDigestMismatch(
                    f"Debian {pkg.suite} serves {pkg.name} {pkg.version} with sha256 {actual}, but "
                    f"{pkg.sha256} is pinned; the archive changed a published version, so review it and "
                    f"run `blindbox lock --update RECIPE` if you accept it (this changes the measurement).",
                    source=pkg.source, expected=pkg.sha256, actual=actual)
            with self.cache.tempdir("apt-download") as tmp:
                shown, report = f"{pkg.name} {pkg.version}", progress.current()
                report.download(shown, 0, pkg.size)
                with tree.lock(shared=True):   # apt writes the .deb straight into tmp: its size is the progress
                    proc = self._apt(tree, ["apt-get", "-q", "download", f"{pkg.name}={pkg.version}"],
                                     cwd=tmp, watch=lambda: report.download(shown, _dir_bytes(tmp), pkg.size))
                debs = sorted(tmp.glob("*.deb"))
                if proc.returncode == 0 and len(debs) == 1:
                    report.downloaded(shown, debs[0].stat().st_size)
                if proc.returncode != 0 and re.search(r"\b(404|410)\b", proc.stderr + proc.stdout):
                    raise SourceGone(f"Debian {pkg.suite} lists {pkg.name} {pkg.version} but no longer serves "
                                     f"its file {pkg.filename} ({_last_lines(proc.stderr + proc.stdout, 1)}); "
                                     f"run `blindbox lock --update RECIPE` to pin the current version; this "
                                     f"changes the measurement.", source=pkg.source)
                if proc.returncode != 0 or len(debs) != 1:
                    raise SourceError(f"apt-get download {pkg.name}={pkg.version} from Debian {pkg.suite} "
                                      f"failed ({_last_lines(proc.stderr + proc.stdout)}); check the "
                                      f"network and try again.", source=pkg.source)
                try:
                    path = self.cache.put_file(debs[0], pkg.sha256, move=True)
                except InputDigestMismatch as e:
                    raise InputDigestMismatch(
                        f"The download of {pkg} has sha256 {e.actual}, but {pkg.sha256} is pinned and "
                        f"served in the package index; the transfer or the mirror is corrupt, so try "
                        f"again later or use another mirror.",
                        source=pkg.source, expected=pkg.sha256, actual=e.actual) from None
        self.fetched.append(pkg)
        return path

    def depends(self, pkg: DebianPackage) -> list[str]:
        """Names in the package's Depends field, one per dependency (first alternative).

        Version constraints and architecture qualifiers are dropped:
        ``"linux-image-6.1.0-56-amd64 (= 6.1.192-2)"`` gives ``"linux-image-6.1.0-56-amd64"``.
        Read from the cached .deb's control file when present (works offline), else from
        the package index.
        """
        hit = self.cache.path(pkg.sha256)
        if hit is not None:
            from .deb import read_deb_control   # here: .deb brings tarfile and lzma

            fields = read_deb_control(hit)
        else:
            tree = self._tree(pkg.suite, self._tree_arch(pkg))
            self._ensure_lists(tree)
            stanzas = self._show(tree, pkg.name, pkg.version)
            if not stanzas:
                raise self._gone(tree, pkg.name, pkg.version)
            fields = stanzas[0]
        return _depends_names(fields.get("Depends", ""))

    def unpack(self, pkg: DebianPackage) -> Path:
        """The unpacked data tree of ``pkg`` (cached by the .deb's sha256; read-only)."""
        from .deb import extract_deb   # here: .deb brings tarfile and lzma

        return self.cache.tree(pkg.sha256, lambda dest: extract_deb(self.download(pkg), dest))

    def member(self, pkg: DebianPackage, path: str) -> Path:
        """One file of the package, e.g. ``"/usr/share/ovmf/OVMF.amdsev.fd"``.

        The returned path lies in the unpacked tree and may be a symlink to another file
        of the same package.
        """
        tree = self.unpack(pkg)
        parts = [p for p in str(path).split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise SourceError(f"{path!r} is not a file path inside a package; give an absolute path such "
                              f"as /usr/share/ovmf/OVMF.amdsev.fd.", source=pkg.source)
        p = tree.joinpath(*parts)
        real = os.path.realpath(p)
        root = os.path.realpath(tree)
        if real.startswith(root + os.sep) and os.path.isfile(real):
            return p
        files = _tree_files(tree)
        want = "/" + "/".join(parts)
        base = parts[-1].lower()
        similar = [f for f in files if f.rsplit("/", 1)[-1].lower() == base]
        import difflib   # only for this message

        similar += [f for f in difflib.get_close_matches(want, files, n=6, cutoff=0.6) if f not in similar]
        hint = (f"similar names in the package: {', '.join(similar[:6])}" if similar
                else f"it has {len(files)} files, none with a similar name")
        what = "is a directory" if os.path.isdir(real) else "has no file"
        raise SourceError(f"{pkg} {what} {want} ({hint}); check the path in the recipe (it is "
                          f"case-sensitive).", source=pkg.source)


def _run_watched(cmd: list[str], cwd: Path | None, env: dict[str, str], timeout: float,
                 watch: Callable[[], None], interval: float = 0.1) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)``, calling ``watch()``
    every ``interval`` seconds while the command runs."""
    import subprocess

    deadline = time.monotonic() + timeout
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, errors="replace") as proc:
        while True:
            try:
                out, err = proc.communicate(timeout=interval)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.communicate()
                    raise
                watch()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _dir_bytes(d: Path) -> int:
    """Bytes in the files directly inside ``d`` (a download in progress)."""
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(d):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def _tree_files(tree: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append("/" + os.path.relpath(os.path.join(dirpath, n), tree))
    return sorted(out)


def _depends_names(field: str) -> list[str]:
    names = []
    for group in field.split(","):
        first = group.split("|")[0].strip()
        if not first:
            continue
        name = re.split(r"[\s(\[<]", first, maxsplit=1)[0].split(":")[0]
        if name and name not in names:
            names.append(name)
    return names


def _release_fields(path: Path) -> dict[str, str]:
    """Date and Valid-Until of an (In)Release file."""
    fields: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("MD5Sum:", "SHA256:", "SHA1:")):
                break
            key, sep, value = line.partition(":")
            if sep and key in ("Date", "Valid-Until"):
                fields[key] = value.strip()
    return fields


def _parse_date(text: str) -> _dt.datetime | None:
    import email.utils      # here, not at import: 5 ms that only a Release file's dates need
    try:
        d = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " / ".join(lines[-n:]) or "no output"
