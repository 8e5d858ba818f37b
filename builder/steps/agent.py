"""The attestation agent's runtime: a small tree for the initrd, independent of the application's root.

:func:`assemble_agent` builds, in a staging directory, everything the agent needs to run with
the initrd's ``/agent`` as its root (``chroot``):

* the data trees of the pinned ``agent:<package>`` .debs (Python 3.11, its standard library,
  openssl and their Pre-Depends/Depends closure; builder/lock.py), applied in lock order by
  the one extraction rule of :mod:`builder.rootfs_tree` (absolute symlinks kept: they mean
  "inside this root"; every mtime the recipe's ``source_date_epoch``);
* without :data:`DROPPED` (``/usr/share/doc``, ``man``, ``locale``, ``info``): documentation and
  translations the agent never reads, a fifth of the packages' bytes;
* the agent's own code under :data:`SOURCE_DIR` (``/opt/blindbox``): ``agent.py`` (the
  launcher), ``blindbox/__init__.py``, ``blindbox/agent/*.py`` and ``measure/*.py``, copied from
  the source files of the blindbox that runs the build, so those bytes depend only on the
  blindbox version (never ``__pycache__``);
* the mount points :data:`MOUNT_POINTS` (``/proc /sys /dev /tmp /run``), which the init
  bind-mounts or mounts before it starts the agent.

The initrd carries the tree at :data:`INITRD_DIR`, so it is measured through the
kernel-hashes table like the rest of the initrd; the init copies it into a tmpfs of the
verified root before ``switch_root`` (builder/steps/init.py).

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
Nothing here prints or exits.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.limits import MAX_ROOTFS_UNPACKED_BYTES, MAX_TREE_ENTRIES
from builder.lock import Lock, is_agent_entry
from builder.rootfs_tree import TreeWriter
from builder.steps.rootfs import apply_pinned_debs

__all__ = ["AgentError", "AgentPackage", "AgentTree", "assemble_agent", "source_files", "DROPPED", "INITRD_DIR",
           "MOUNT_POINTS", "SOURCE_DIR", "PYTHON", "OPENSSL", "LAUNCHER"]

#: where the initrd carries the agent's tree
INITRD_DIR = "/agent"
#: where the agent's own code lies inside its tree, and its launcher
SOURCE_DIR = "/opt/blindbox"
LAUNCHER = SOURCE_DIR + "/agent.py"
#: the interpreter and the openssl the agent runs with, inside its tree
PYTHON = "/usr/bin/python3.11"
OPENSSL = "/usr/bin/openssl"
#: directories of the packages left out of the tree (documentation and translations)
DROPPED = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info")
#: directories the init mounts on before it starts the agent
MOUNT_POINTS = ("proc", "sys", "dev", "tmp", "run")


class AgentError(BuildError):
    """The agent's tree cannot be assembled (a package missing or not the pinned one, no agent code)."""


@dataclass(frozen=True)
class AgentPackage:
    """One Debian package of the agent's runtime, for the manifest."""

    name: str
    version: str
    sha256: str
    size: int


@dataclass(frozen=True)
class AgentTree:
    root: Path                              # the staging directory, complete
    packages: tuple[AgentPackage, ...]      # lock order (sorted by name)
    sources: tuple[str, ...]                # the agent's own files, as paths inside the tree


def source_files(blindbox_dir: Path | None = None, measure_dir: Path | None = None) -> list[tuple[str, Path]]:
    """(path inside the agent's tree, source file) of the agent's own code, in a fixed order: the
    files of the running blindbox's ``blindbox`` and ``measure`` packages (or of the given directories)."""
    import blindbox
    import measure

    packages = {"blindbox": Path(blindbox_dir or Path(blindbox.__file__).parent),
                "measure": Path(measure_dir or Path(measure.__file__).parent)}
    launcher = packages["blindbox"] / "agent" / "agent.py"
    if not launcher.is_file():
        raise AgentError(f"this blindbox has no attestation agent ({launcher} is missing), so it cannot build a "
                         f"recipe with agent:; install a blindbox version that has blindbox/agent.")
    out = [(LAUNCHER, launcher), (f"{SOURCE_DIR}/blindbox/__init__.py", packages["blindbox"] / "__init__.py")]
    for package, directory in (("blindbox/agent", packages["blindbox"] / "agent"), ("measure", packages["measure"])):
        for p in sorted(directory.glob("*.py")):
            out.append((f"{SOURCE_DIR}/{package}/{p.name}", p))
    return out


def _drop(root: Path) -> None:
    for rel in DROPPED:
        target = root / rel
        if os.path.lexists(target):
            if stat.S_ISDIR(os.lstat(target).st_mode):
                shutil.rmtree(target)
            else:
                os.unlink(target)


def _put(root: Path, guest: str, data: bytes, mode: int, epoch: int) -> None:
    """Write ``data`` at the absolute ``guest`` path inside ``root``, never through a symlink."""
    parts = [p for p in guest.split("/") if p]
    cur = root
    for p in parts[:-1]:
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            os.chmod(cur, 0o755)
            os.utime(cur, (epoch, epoch))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise AgentError(f"the agent's packages have {cur.relative_to(root)} as a non-directory, where the agent "
                             f"needs {guest}; this package set cannot carry the agent.")
    target = cur / parts[-1]
    if os.path.lexists(target):
        raise AgentError(f"the agent's packages already contain {guest}; this package set cannot carry the agent.")
    target.write_bytes(data)
    os.chmod(target, mode)
    os.utime(target, (epoch, epoch))


def assemble_agent(lock: Lock, inputs: dict[str, Path], dest: Path, *, epoch: int) -> AgentTree:
    """The agent's tree in ``dest`` (which must not exist; removed on error), from the lock's ``agent:``
    packages (``inputs``: entry name -> the fetched .deb) and this blindbox's agent code."""
    entries = [e for e in lock.inputs if is_agent_entry(e.name)]
    if not entries:
        raise AgentError(f"{lock.path or 'the lock file'} pins no package of the attestation agent; run "
                         f"`blindbox lock` on the recipe.")
    sources = source_files()
    dest.mkdir(parents=True)
    try:
        writer = TreeWriter(dest, owner="the attestation agent's Debian packages", unit="package",
                            keep_absolute_links=True, epoch=epoch, max_members=MAX_TREE_ENTRIES,
                            max_bytes=MAX_ROOTFS_UNPACKED_BYTES, limit_why="the agent's runtime")
        apply_pinned_debs(entries, inputs, writer, error=AgentError, caller="assemble_agent")
        packages = []
        for entry in entries:
            assert entry.version is not None  # a debian entry has a version (LockedInput.from_dict)
            packages.append(AgentPackage(entry.name.split(":", 1)[1], entry.version, entry.sha256, entry.size))
        writer.finish()
        _drop(dest)
        for guest, src in sources:
            _put(dest, guest, src.read_bytes(), 0o644, epoch)
        for d in MOUNT_POINTS:
            p = dest / d
            if not os.path.lexists(p):
                os.mkdir(p, 0o755)
            elif not stat.S_ISDIR(os.lstat(p).st_mode):
                raise AgentError(f"the agent's packages have /{d} as a non-directory; the init mounts a file "
                                 f"system there.")
            os.chmod(p, 0o1777 if d == "tmp" else 0o755)
            os.utime(p, (epoch, epoch))
        for guest in (PYTHON, OPENSSL):
            if not os.path.lexists(dest / guest.lstrip("/")):
                raise AgentError(f"the agent's packages have no {guest}; run `blindbox lock` on the recipe again.")
        for dirpath, dirnames, filenames in os.walk(dest):   # what the steps above touched, too
            for n in dirnames + filenames:
                os.utime(os.path.join(dirpath, n), (epoch, epoch), follow_symlinks=False)
        os.utime(dest, (epoch, epoch))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return AgentTree(dest, tuple(packages), tuple(g for g, _ in sources))
