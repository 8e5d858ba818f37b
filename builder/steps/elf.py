"""Shared-library closure of dynamically linked ELF binaries, resolved inside a root tree.

The root is a set of unpacked Debian packages, not a live system: there is no
``/etc/ld.so.cache`` there nor in the initrd, so a library is only usable in the guest if
the dynamic loader finds it without one.  The closure therefore follows what glibc's
``ld.so`` does without a cache (``ld.so --help`` on Debian x86-64 lists the system search
path ``/lib/x86_64-linux-gnu``, ``/usr/lib/x86_64-linux-gnu``, ``/lib``, ``/usr/lib``):

1. a ``DT_NEEDED`` name with a ``/`` is a path;
2. ``DT_RPATH`` of the object, then of the executable, each only if that object has no
   ``DT_RUNPATH``;
3. ``DT_RUNPATH`` of the object;
4. the system search path above.

``$ORIGIN`` (the directory of the object in the guest), ``$LIB`` and ``$PLATFORM`` are
expanded as Debian's loader does.  A candidate of another ELF class or machine is
skipped, as ``ld.so`` skips it.  The interpreter (``PT_INTERP``) goes to exactly the path
the binary names; every library goes to the guest path where it was found.

Paths are resolved inside the root: symlinks are followed with absolute targets taken
relative to the root, and never leave it.  Debian's packages moved from ``/lib`` to
``/usr/lib`` (merged ``/usr``); the links ``/lib -> usr/lib`` and ``/lib64 -> usr/lib64``
come from ``base-files``/``usrmerge`` rather than from the package that holds the library,
so when ``/bin``, ``/sbin``, ``/lib`` or ``/lib64`` is absent from the root its ``/usr``
twin is used.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.segments import InterpSegment
from elftools.elf.elffile import ELFFile

from builder.errors import BuildError

SYSTEM_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")
MERGED_USR = ("bin", "sbin", "lib", "lib64")
_LIB = "lib/x86_64-linux-gnu"
_PLATFORM = "x86_64"
_MAX_SYMLINKS = 40


class ElfError(BuildError):
    """A binary is not a usable ELF file or its libraries cannot be resolved."""


class MissingLibrary(ElfError):
    def __init__(self, message: str, *, binary: str, library: str):
        super().__init__(message)
        self.binary = binary
        self.library = library


@dataclass(frozen=True)
class SharedObject:
    """One file the guest's dynamic loader will open."""

    guest_path: str  # absolute path in the guest
    source: Path  # the regular file in the root tree
    name: str  # the DT_NEEDED name, or the PT_INTERP path
    needed_by: str  # guest path of the first object that needed it


@dataclass(frozen=True)
class ElfInfo:
    elf_class: int
    machine: str
    interp: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    has_runpath: bool

    @property
    def is_dynamic(self) -> bool:
        return self.interp is not None or bool(self.needed)


def read_elf(path: Path, *, what: str) -> ElfInfo:
    """PT_INTERP and the dynamic tags of an ELF file (``what`` names it in errors)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                raise ElfError(f"{what} ({path}) is not an ELF file; add scripts and data as plain files, "
                               f"not as binaries.")
            fh.seek(0)
            elf = ELFFile(fh)
            interp = None
            needed: list[str] = []
            rpath: list[str] = []
            runpath: list[str] = []
            has_runpath = False
            for seg in elf.iter_segments():
                ptype = seg["p_type"]
                if ptype == "PT_INTERP" and isinstance(seg, InterpSegment):
                    interp = seg.get_interp_name()
                elif ptype == "PT_DYNAMIC" and isinstance(seg, DynamicSegment):
                    # pyelftools sets .needed, .rpath and .runpath per tag type; its DynamicTag does not declare them
                    for tag in seg.iter_tags():
                        if tag.entry.d_tag == "DT_NEEDED":
                            needed.append(tag.needed)  # type: ignore[attr-defined]
                        elif tag.entry.d_tag == "DT_RPATH":
                            rpath.extend(p for p in tag.rpath.split(":"))  # type: ignore[attr-defined]
                        elif tag.entry.d_tag == "DT_RUNPATH":
                            has_runpath = True
                            runpath.extend(p for p in tag.runpath.split(":"))  # type: ignore[attr-defined]
            return ElfInfo(elf.elfclass, elf["e_machine"], interp, tuple(needed), tuple(rpath), tuple(runpath),
                           has_runpath)
    except ElfError:
        raise
    except (ELFError, ConstructError, OSError, ValueError, KeyError, IndexError, AssertionError) as e:
        # pyelftools checks some invariants of the file with assert (e.g. a dynamic
        # segment without a string table), so a damaged file can raise AssertionError
        detail = str(e) or "its headers contradict each other"
        raise ElfError(f"cannot read {what} ({path}) as ELF: {detail}; the file is damaged or not a program.") \
            from e


Roots = Sequence[Path]


def _roots(root: str | Path | Sequence[str | Path]) -> tuple[Path, ...]:
    roots = (Path(root),) if isinstance(root, (str, os.PathLike)) else tuple(Path(r) for r in root)
    if not roots:
        raise ElfError("no library root was given; give the unpacked package tree(s) that hold the libraries.")
    for r in roots:
        if not r.is_dir():
            raise ElfError(f"the library root {r} is not a directory; give the unpacked package tree.")
    return roots


def _lookup(roots: Roots, parts: list[str]) -> Path | None:
    """The first root's path for ``parts`` that exists (as a link or otherwise)."""
    for r in roots:
        p = r.joinpath(*parts)
        if os.path.lexists(p):
            return p
    return None


def resolve_in_root(root: str | Path | Sequence[str | Path], guest_path: str) -> Path | None:
    """The regular file that ``guest_path`` names inside the root tree(s), or None.

    Several roots (one unpacked package each) act as one tree, the first root winning
    where two hold the same path.  Symlinks are followed inside that tree (absolute
    targets are relative to it, ``..`` stops at its top); a missing top-level ``bin``,
    ``sbin``, ``lib`` or ``lib64`` falls back to its ``usr/`` twin (merged ``/usr``).
    """
    roots = _roots(root)
    parts = [p for p in guest_path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        found = _lookup(roots, resolved + [part])
        if found is None and not resolved and part in MERGED_USR:
            found = _lookup(roots, ["usr", part])
            if found is not None:
                resolved = ["usr"]
        if found is None:
            return None
        if found.is_symlink():
            hops += 1
            if hops > _MAX_SYMLINKS:
                return None
            target = os.readlink(found)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    final = _lookup(roots, resolved) if resolved else None
    return final if final is not None and final.is_file() and not final.is_symlink() else None


def _guest_location(roots: Roots, guest_path: str) -> str:
    """``guest_path`` with the merged-/usr fallback applied if the roots need it."""
    parts = [p for p in guest_path.split("/") if p]
    if parts and parts[0] in MERGED_USR and _lookup(roots, parts[:1]) is None \
            and _lookup(roots, ["usr", parts[0]]) is not None:
        return "/usr/" + "/".join(parts)
    return "/" + "/".join(parts)


def _expand(entry: str, origin: str) -> str:
    for token, value in (("${ORIGIN}", origin), ("$ORIGIN", origin), ("${LIB}", _LIB), ("$LIB", _LIB),
                         ("${PLATFORM}", _PLATFORM), ("$PLATFORM", _PLATFORM)):
        entry = entry.replace(token, value)
    return entry


def _compatible(path: Path, ref: ElfInfo) -> bool:
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            return elf.elfclass == ref.elf_class and elf["e_machine"] == ref.machine
    except (ELFError, OSError, ValueError):
        return False


def library_closure(binaries: Sequence[tuple[Path, str]], root: str | Path | Sequence[str | Path]) \
        -> list[SharedObject]:
    """Every interpreter and shared library that ``binaries`` load, found in ``root``.

    ``binaries`` are (file, absolute guest path) pairs; the guest path gives ``$ORIGIN``.
    ``root`` is one tree or several (e.g. one unpacked Debian package each), searched as
    one.  Static binaries need nothing.  The result is sorted by guest path, one entry
    per path.
    """
    root = _roots(root)
    found: dict[str, SharedObject] = {}
    for source, guest in binaries:
        guest = posixpath.normpath("/" + guest.lstrip("/"))
        info = read_elf(Path(source), what=f"binary {guest}")
        if not info.is_dynamic:
            continue
        if info.interp:
            interp_src = resolve_in_root(root, info.interp)
            if interp_src is None:
                raise MissingLibrary(
                    f"binary {guest} needs the program interpreter {info.interp}, which the library root does not "
                    f"contain; add the package that ships it (libc6 for glibc programs).",
                    binary=guest, library=info.interp)
            found.setdefault(info.interp, SharedObject(info.interp, interp_src, info.interp, guest))
        exe_rpath = () if info.has_runpath else tuple(_expand(p, posixpath.dirname(guest)) for p in info.rpath)
        # (guest path, ELF info, the objects that led to it from the binary)
        queue: list[tuple[str, ElfInfo, tuple[str, ...]]] = [(guest, info, ())]
        seen_objects = {guest}
        while queue:
            obj_guest, obj, chain = queue.pop(0)
            origin = posixpath.dirname(obj_guest)
            dirs: list[str] = []
            if not obj.has_runpath:
                dirs += [_expand(p, origin) for p in obj.rpath]
                dirs += list(exe_rpath)
            dirs += [_expand(p, origin) for p in obj.runpath]
            dirs += list(SYSTEM_DIRS)
            for name in obj.needed:
                hit = _find(root, name, dirs, info)
                if hit is None:
                    via = " -> ".join((guest,) + chain)
                    searched = ", ".join(dict.fromkeys(d for d in dirs if d))
                    raise MissingLibrary(
                        f"binary {guest} needs {name} (required by {via}), which the library root does not contain "
                        f"(searched {searched}); add the Debian package that ships {name}.",
                        binary=guest, library=name)
                lib_guest, lib_src = hit
                if lib_guest not in found:
                    found[lib_guest] = SharedObject(lib_guest, lib_src, name, obj_guest)
                if lib_guest not in seen_objects:
                    seen_objects.add(lib_guest)
                    lib_info = read_elf(lib_src, what=f"library {lib_guest}")
                    queue.append((lib_guest, lib_info, chain + (lib_guest,)))
    return [found[k] for k in sorted(found)]


def _find(root: Roots, name: str, dirs: list[str], ref: ElfInfo) -> tuple[str, Path] | None:
    if "/" in name:
        candidates = [name] if name.startswith("/") else []
    else:
        candidates = [posixpath.join(d, name) for d in dirs if d.startswith("/")]
    for cand in candidates:
        cand = posixpath.normpath(cand)
        src = resolve_in_root(root, cand)
        if src is not None and _compatible(src, ref):
            return _guest_location(root, cand), src
    return None
