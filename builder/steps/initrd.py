"""The initrd: static busybox, an init, kernel modules, extra files and binaries with libraries.

Layout (every entry uid/gid 0, mtime SOURCE_DATE_EPOCH, fixed modes):

=============================  ======  =================================================
``init``                       0755    the given script, or :func:`.init.render_init`
``bin/busybox``                0755    the static busybox
``bin/<applet>``               link    ``busybox``, for each applet (``sh``, ``mount``, ...)
``sbin/<applet>``              link    ``../bin/busybox`` for ``modprobe``, ``insmod``,
                                       ``poweroff`` (the kernel's ``request_module`` runs
                                       ``/sbin/modprobe``)
``dev/console``                c 5,1   the console the kernel opens for init
``dev``, ``proc``, ``sys``     0755    mount points; ``tmp`` is 1777, ``root`` 0700
``lib/modules/<release>/...``  0644    modules (decompressed ``.ko``), ``modules.dep``,
                                       ``modules.alias``
``etc/blindbox/...``           0644    with a runtime policy: ``runtime-policy.json`` (its
                                       canonical form) and ``runtime-policy.nft`` (:mod:`.nft`)
files and binaries             given   at their destinations; libraries 0644 and the
                                       program interpreter 0755 at the guest paths the
                                       dynamic loader opens (a second path to the same
                                       file becomes a symlink to the first)
=============================  ======  =================================================

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.limits import MAX_INITRD_FILE_BYTES
from measure.inputs import read_bounded
from measure.runtime_policy import GUEST_PATH as RUNTIME_POLICY_PATH

from . import cpio
from .elf import SharedObject, library_closure, read_elf
from .init import (AGENT_INITRD_DIR, INIT_APPLETS, AgentLaunch, AppConfig, PolicyLaunch, render_init,
                   render_rootfs_init)
from .nft import RULESET_PATH
from .kernel import ModuleClosure, module_closure

#: Applets linked in ``bin/`` besides those the default init uses.
DEFAULT_APPLETS = tuple(sorted(set(INIT_APPLETS) | {
    "cat", "chmod", "cp", "cut", "echo", "env", "find", "head", "hexdump", "insmod", "ln", "ls", "lsmod", "mkdir",
    "mknod", "mv", "ps", "readlink", "rm", "rmmod", "sed", "sha256sum", "switch_root", "tail", "true", "false",
    "uname", "umount", "xargs",
}))
SBIN_APPLETS = ("insmod", "modprobe", "poweroff", "reboot", "rmmod", "switch_root")


class InitrdError(BuildError):
    """An initrd input is unusable (missing file, dynamic busybox, conflicting destinations)."""


@dataclass(frozen=True)
class Initrd:
    """A built initrd and what went into it."""

    data: bytes  # compressed, ready for -initrd
    compression: str
    compressor: str  # what produced the stream (for the manifest)
    cpio_sha256: str  # the uncompressed archive
    listing: tuple[str, ...]  # "<octal st_mode> <path>[ -> target]" per entry, archive order
    init: bytes
    modules: ModuleClosure | None
    libraries: tuple[SharedObject, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class RuntimePolicyFiles:
    """What an initrd carries of a runtime policy: its canonical JSON, its nft rule set, and how the init
    enforces it."""

    canonical: bytes
    ruleset: str
    launch: PolicyLaunch


def _read(path: Path, what: str) -> bytes:
    try:
        path = Path(path)
        if not path.is_file():
            raise InitrdError(f"the {what} {path} is not a regular file; give the path of the file itself.")
        return read_bounded(path, what, MAX_INITRD_FILE_BYTES)
    except OSError as e:
        raise InitrdError(f"cannot read the {what} {path}: {e.strerror}; check the path.") from e


def _guest(dest: str, what: str) -> str:
    if not isinstance(dest, str) or not dest.strip("/"):
        raise InitrdError(f"the destination {dest!r} of {what} is empty; give a path inside the initrd such as "
                          f"'/usr/bin/app'.")
    return "/" + cpio.normalize_path(dest)


def build_initrd(*, busybox: Path, source_date_epoch: int, compression: str = "gzip",
                 init_script: bytes | None = None, app_command: str | None = None,
                 kernel_tree: Path | None = None, kernel_release: str | None = None,
                 modules: Sequence[str] = (),
                 files: Sequence[tuple[Path, str, int]] = (),
                 binaries: Sequence[tuple[Path, str, Path | Sequence[Path]]] = (),
                 applets: Sequence[str] = DEFAULT_APPLETS,
                 rootfs_app: tuple[AppConfig, bool] | None = None,
                 agent: tuple[Path, AgentLaunch] | None = None,
                 runtime_policy: RuntimePolicyFiles | None = None,
                 deflate: cpio.Deflate | None = None) -> Initrd:
    """Build a deterministic initrd.

    ``deflate``: the pinned zlib (:func:`.deflate.load`) that ``gzip`` compression needs.

    ``busybox``: a statically linked busybox (Debian ``busybox-static``: ``/bin/busybox``).
    ``init_script``: the ``/init`` bytes; when None, :func:`.init.render_init` writes one
    that loads ``modules`` and reports sev-guest, then runs ``app_command`` if given.
    ``kernel_tree``/``kernel_release``: the unpacked kernel package whose ``modules``
    (names or aliases, with their dependency closure) go to ``lib/modules/<release>``.
    ``files``: (source, guest path, mode).  ``binaries``: (source, guest path, root) for
    dynamically linked programs whose interpreter and libraries are taken from ``root``:
    one tree, or several (one unpacked package each) searched as one
    (:func:`.elf.library_closure`).  ``rootfs_app``: (the application, network or not):
    the default init is then :func:`.init.render_rootfs_init`, which verifies the
    application root and starts the application in it (``modules`` must include
    :data:`.init.ROOTFS_MODULES`, and ``binaries`` dmsetup).  ``agent``: (the attestation
    agent's staging tree, how to start it): the tree goes to :data:`.init.AGENT_INITRD_DIR`
    (:meth:`.cpio.Archive.add_tree`) and the rootfs init starts it before the application (needs
    ``rootfs_app`` with network).  ``runtime_policy``: its canonical bytes go to
    ``/etc/blindbox/runtime-policy.json`` and its rule set to :data:`.nft.RULESET_PATH` (0644), and
    the rootfs init enforces it (``binaries`` must carry nft at :data:`.nft.NFT_DEST`, ``modules``
    :data:`.nft.NFT_MODULES`).  The output depends only on these arguments' contents.
    """
    if compression not in cpio.COMPRESSIONS:
        raise InitrdError(f"initrd compression {compression!r} is not supported; use one of "
                          f"{', '.join(cpio.COMPRESSIONS)}.")
    if compression == "gzip" and deflate is None:
        raise ValueError("build_initrd: gzip compression needs the pinned zlib (deflate=); none was given")
    archive = cpio.Archive()

    busybox_bytes = _read(busybox, "busybox binary")
    if read_elf(Path(busybox), what="busybox").is_dynamic:
        raise InitrdError(f"busybox {busybox} is dynamically linked; use the static build (Debian package "
                          f"busybox-static).")
    archive.add_file("bin/busybox", busybox_bytes, 0o755)
    for applet in sorted(set(applets)):
        if not applet or "/" in applet or applet == "busybox":
            raise InitrdError(f"busybox applet name {applet!r} is not valid; give names such as 'sh'.")
        archive.add_symlink(f"bin/{applet}", "busybox")
    for applet in SBIN_APPLETS:
        archive.add_symlink(f"sbin/{applet}", "../bin/busybox")
    for d in ("dev", "proc", "sys", "run", "etc"):
        archive.add_dir(d, 0o755)
    archive.add_dir("tmp", 0o1777)
    archive.add_dir("root", 0o700)
    archive.add_char_device("dev/console", 5, 1, 0o600)

    closure = None
    if modules or kernel_tree is not None:
        if kernel_tree is None or not kernel_release:
            raise InitrdError("kernel modules were requested but no kernel package tree and release were given; "
                              "pass kernel_tree and kernel_release.")
        closure = module_closure(kernel_tree, kernel_release, list(modules))
        for path, data in closure.files():
            archive.add_file(path, data, 0o644)
        archive.add_file(f"{closure.prefix}/modules.dep", closure.modules_dep(), 0o644)
        archive.add_file(f"{closure.prefix}/modules.alias", closure.modules_alias(), 0o644)

    if init_script is None:
        requested = closure.requested if closure else ()
        builtin = set(closure.builtin) if closure else set()
        sev_names = {"sev-guest", "sev_guest"}
        sev = "absent"
        for request, _ in requested:
            if request in sev_names:
                sev = "builtin" if request in builtin else "carried"
        loaded = [r for r, _ in requested if r not in sev_names and r not in builtin]
        built_in = [r for r, _ in requested if r not in sev_names and r in builtin]
        if rootfs_app is not None:
            if app_command is not None:
                raise InitrdError("an app command was given with a root filesystem; the application's entrypoint "
                                  "is what runs, so drop the app command.")
            init_script = render_rootfs_init(modules=loaded, builtin=built_in, sev_guest=sev, app=rootfs_app[0],
                                             network=rootfs_app[1], agent=None if agent is None else agent[1],
                                             policy=None if runtime_policy is None else runtime_policy.launch)
        else:
            init_script = render_init(modules=loaded, builtin=built_in, sev_guest=sev, app_command=app_command)
    elif app_command is not None:
        raise InitrdError("both an init script and an app command were given; the app command only applies to the "
                          "default init, so put it into your init script.")
    if runtime_policy is not None and rootfs_app is None:
        raise InitrdError("the runtime policy is enforced by the root filesystem's init; give rootfs_app too.")
    if agent is not None and rootfs_app is None:
        raise InitrdError("the attestation agent is started by the root filesystem's init; give rootfs_app too.")
    archive.add_file("init", bytes(init_script), 0o755)
    if agent is not None:
        archive.add_tree(AGENT_INITRD_DIR, agent[0])

    if runtime_policy is not None:
        archive.add_dir(posixpath.dirname(RUNTIME_POLICY_PATH).lstrip("/"), 0o755)
        archive.add_dir(posixpath.dirname(RULESET_PATH).lstrip("/"), 0o755)
        archive.add_file(RUNTIME_POLICY_PATH.lstrip("/"), runtime_policy.canonical, 0o644)
        archive.add_file(RULESET_PATH.lstrip("/"), runtime_policy.ruleset.encode("utf-8"), 0o644)

    for src, dest, mode in files:
        guest = _guest(dest, f"file {src}")
        archive.add_file(guest, _read(src, f"file for {guest}"), mode)

    by_root: dict[tuple[Path, ...], list[tuple[Path, str]]] = {}
    for src, dest, root in binaries:
        guest = _guest(dest, f"binary {src}")
        archive.add_file(guest, _read(src, f"binary for {guest}"), 0o755)
        roots = (Path(root),) if isinstance(root, (str, os.PathLike)) else tuple(Path(r) for r in root)
        by_root.setdefault(roots, []).append((Path(src), guest))
    libraries: list[SharedObject] = []
    for roots in sorted(by_root, key=lambda rs: [str(r) for r in rs]):
        libraries.extend(library_closure(by_root[roots], roots))
    _add_libraries(archive, libraries)

    raw = archive.to_bytes(mtime=source_date_epoch)
    listing = tuple(_describe(e) for e in archive.entries())
    compressed = cpio.compress(raw, compression, deflate)
    return Initrd(compressed, compression, cpio.compressor_identity(compression, deflate),
                  hashlib.sha256(raw).hexdigest(), listing, bytes(init_script), closure,
                  tuple(sorted(libraries, key=lambda s: s.guest_path)))


def _add_libraries(archive: cpio.Archive, libraries: list[SharedObject]) -> None:
    first_path: dict[Path, str] = {}
    # The kernel opens the interpreter with exec permission checks: its file must be 0755
    # even when it is stored under its library path and the PT_INTERP path is a link.
    interpreters = {s.source.resolve() for s in libraries if s.name.startswith("/")}
    for lib in sorted(libraries, key=lambda s: s.guest_path):
        key = lib.source.resolve()
        existing = archive.get(lib.guest_path)
        if key in first_path:
            target = first_path[key]
            if existing is None:
                archive.add_symlink(lib.guest_path, posixpath.relpath(target, posixpath.dirname(lib.guest_path)))
            continue
        first_path[key] = lib.guest_path
        mode = 0o755 if key in interpreters else 0o644
        data = _read(lib.source, f"library {lib.name}")
        if existing is not None and existing.data == data:
            continue  # the same library from two roots, or already given as a file
        archive.add_file(lib.guest_path, data, mode)


def _describe(e: cpio.Entry) -> str:
    text = f"{e.st_mode:06o} {e.path}"
    if e.kind == cpio.Kind.SYMLINK:
        text += f" -> {e.data.decode('utf-8')}"
    elif e.kind == cpio.Kind.CHAR:
        text += f" c {e.rdev[0]},{e.rdev[1]}"
    else:
        text += f" {len(e.data)}"
    return text
