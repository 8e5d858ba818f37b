"""In-memory stand-ins for builder.sources, so builder logic is tested without the archive.

``FakeArchive`` serves packages whose contents are small trees of files given as bytes;
it honours exact versions, reports withdrawn versions as gone, and counts downloads.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.errors import InputDigestMismatch, OfflineMiss, SourceGone


def ar_archive(members: list[tuple[str, bytes]]) -> bytes:
    """An ar archive (a .deb's container) holding ``members``, written byte by byte so tests can
    put in it what dpkg-deb never would."""
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


@dataclass(frozen=True)
class FakePackage:
    name: str
    version: str
    arch: str
    suite: str
    filename: str
    size: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FakePackage":
        return cls(**d)


def _unpack_tar(src: Path, dest: Path) -> None:
    """Unpack a fake package: regular files and directories only, inside ``dest``.

    The same guarantees as ``extractall(filter="tar")`` (which Python 3.11.2 lacks) for
    what a fake package holds: no absolute or ``..`` names, no links or special files, no
    setuid/setgid/sticky or group/other write bits.
    """
    dest.mkdir(parents=True)
    with tarfile.open(src) as tar:
        for m in tar:
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if m.name.startswith("/") or ".." in parts or not (m.isreg() or m.isdir()):
                raise ValueError(f"fake package {src} holds {m.name!r} ({m.type!r}); refusing it")
            target = dest.joinpath(*parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as f, open(target, "xb") as out:
                shutil.copyfileobj(f, out)
            os.chmod(target, m.mode & 0o755)
            os.utime(target, (m.mtime, m.mtime))


def _deb_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o755 if "/bin/" in path or path.startswith("/boot/") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FakeArchive:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.packages: dict[tuple[str, str], list[tuple[FakePackage, dict, list]]] = {}
        self.withdrawn: set[tuple[str, str]] = set()
        self.cache: dict[str, bytes] = {}
        self.downloads = 0
        self.offline = False
        self.add_compressor()

    def add_compressor(self) -> FakePackage:
        """Serve the initrd compressor's package (zlib1g from bookworm) with the real pinned library,
        which the builder loads to write a gzip initrd (every gzip recipe's lock pins it)."""
        from builder.recipe import COMPRESSOR
        from builder.steps.deflate import find_library
        from tests.realinputs import pinned_compressor

        tree, pkg = pinned_compressor()
        lib = find_library(tree)
        assert COMPRESSOR.package is not None and COMPRESSOR.suite is not None
        return self.add(COMPRESSOR.package, pkg.version, COMPRESSOR.suite,
                        {"/" + lib.relative_to(tree).as_posix(): lib.read_bytes()})

    def add(self, name: str, version: str, suite: str, files: dict[str, bytes], depends=()) -> FakePackage:
        blob = _deb_bytes(files)
        pkg = FakePackage(name, version, "amd64", suite, f"pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb",
                          len(blob), hashlib.sha256(blob).hexdigest())
        self.packages.setdefault((name, suite), []).append((pkg, files, list(depends)))
        self._blobs = getattr(self, "_blobs", {})
        self._blobs[pkg.sha256] = blob
        return pkg

    def withdraw(self, pkg: FakePackage) -> None:
        self.withdrawn.add((pkg.name, pkg.version))

    def _served(self, name, suite):
        return [e for e in self.packages.get((name, suite), []) if (e[0].name, e[0].version) not in self.withdrawn]

    def resolve(self, name, suite, version=None, arch="amd64"):
        served = self._served(name, suite)
        if version is not None:
            served = [e for e in served if e[0].version == version]
        if not served:
            raise SourceGone(f"{name} {version or ''} is not served by {suite}", source=name)
        return served[-1][0]

    def depends(self, pkg):
        for entries in self.packages.values():
            for p, _, deps in entries:
                if p == pkg:
                    return list(deps)
        return []

    def control(self, pkg) -> dict[str, str]:
        deps = self.depends(pkg)
        # like Debian's essential packages, the first dependency is a Pre-Depends
        return {"Pre-Depends": ", ".join(deps[:1]), "Depends": ", ".join(f"{d} (>= 1)" for d in deps[1:])}

    def download(self, pkg) -> Path:
        path = self.root / f"{pkg.sha256}.tar"
        if pkg.sha256 in self.cache:
            path.write_bytes(self.cache[pkg.sha256])
            return path
        if self.offline:
            raise OfflineMiss(f"{pkg.name} {pkg.version} is not in the cache (offline)", source=pkg.name)
        if (pkg.name, pkg.version) in self.withdrawn:
            raise SourceGone(f"{pkg.name} {pkg.version} is no longer served and not cached", source=pkg.name)
        blob = self._blobs.get(pkg.sha256)
        if blob is None:
            raise InputDigestMismatch(f"{pkg.name} {pkg.version}: the archive serves other bytes",
                                      source=pkg.name, expected=pkg.sha256)
        self.downloads += 1
        self.cache[pkg.sha256] = blob
        path.write_bytes(blob)
        return path

    def unpack(self, pkg) -> Path:
        src = self.download(pkg)
        dest = self.root / f"{pkg.sha256}.d"
        if not dest.exists():
            _unpack_tar(src, dest)
        return dest

    def member(self, pkg, path: str) -> Path:
        p = self.unpack(pkg) / path.lstrip("/")
        if not p.is_file():
            raise SourceGone(f"{pkg.name} has no {path}", source=pkg.name)
        return p
