"""The application's root filesystem: its source unpacked, extra files laid over it, and how to start it.

:func:`assemble_rootfs` turns the recipe's ``rootfs:`` (an OCI image, a directory, a
tarball or Debian packages, each pinned by the lock) into a complete staging directory,
by the one extraction rule of :mod:`builder.rootfs_tree`, and resolves the application's
start settings (:class:`builder.steps.init.AppConfig`) against that tree:

* the source is checked against its pin before anything is taken from it (an OCI image's
  manifest digest, a tree's canonical listing digest; Debian packages arrive verified from
  the content cache) and unpacked with every mtime set to the recipe's
  ``source_date_epoch`` and absolute symlinks kept;
* ``rootfs.files`` are written over it (never through a symlink), then the mount points
  ``/proc /sys /dev /tmp /run`` and the working directory are created if missing;
* argv = entrypoint + cmd (the recipe's entrypoint drops the image's Cmd, as docker does);
  a program name without ``/`` is looked up in the environment's PATH inside the root and
  must be an executable regular file there; the user is resolved to numeric ids through
  the tree's ``/etc/passwd`` and ``/etc/group``.

On any error the staging directory is removed before the exception propagates, so a
caller never sees a partial tree (:func:`remove_tree` removes a finished one).

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
Nothing here prints or exits.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError, InputDigestMismatch, SourceError
from builder.limits import MAX_ROOTFS_UNPACKED_BYTES, MAX_TREE_ENTRIES
from builder.lock import Lock, LockedInput
from builder.recipe import DEFAULT_PATH, ROOTFS_MOUNT_POINTS, Recipe, RootfsSpec, rootfs_path
from builder.rootfs_tree import BoundedTarInfo, TreeWriter, extract_tarball, resolve_inside, tree_digest
from builder.sources.deb import apply_deb
from builder.sources.oci import OciImage, apply_oci_layers, read_oci_image
from builder.steps.init import AppConfig
from measure.inputs import file_digest

__all__ = ["RootfsError", "RootfsSource", "RootfsTree", "assemble_rootfs", "extract_source_tree", "remove_tree",
           "resolve_app", "MAX_ACCOUNT_DB_BYTES"]

#: /etc/passwd or /etc/group of the root filesystem, read whole to resolve the user: real
#: ones are a few KiB.
MAX_ACCOUNT_DB_BYTES = 4 * 1024 * 1024
_CHUNK = 1 << 20
_MAX_ID = (1 << 32) - 2          # (uid_t)-1 means "no change" to the kernel
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RootfsError(BuildError):
    """The root filesystem cannot be assembled from what the recipe gives (exit status 2)."""


@dataclass(frozen=True)
class RootfsSource:
    """One piece the root filesystem is made of, for the manifest."""

    kind: str            # "oci-config" | "oci-layer" | "debian" | "tree" | "file"
    name: str            # "layer 1 (<media type>)", package name, source path, file path
    sha256: str          # hex
    size: int
    version: str | None = None


@dataclass(frozen=True)
class RootfsTree:
    root: Path                         # the staging directory, complete
    app: AppConfig                     # fully resolved: numeric uid/gid, absolute argv[0]
    sources: tuple[RootfsSource, ...]
    tree_sha256: str                   # builder.rootfs_tree.tree_digest(root)


def remove_tree(root: os.PathLike | str) -> None:
    """Remove a staging tree (every directory of it is u+rwx, so no privileges are needed)."""
    shutil.rmtree(root, ignore_errors=True)


def _where(recipe: Recipe, key: str = "rootfs") -> str:
    spec = recipe.rootfs
    assert spec is not None
    return f"{recipe.path}:{spec.line}: {key}"


# --------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------

def _raise(e: OSError) -> None:
    raise e    # a directory os.walk cannot list is an error, not a silently missing subtree


def _extract_directory(src: Path, dest: Path, epoch: int) -> None:
    """Copy the directory ``src`` into ``dest`` (which must not exist) by the extraction rule: its
    entries are streamed as one tar layer through :class:`TreeWriter`, so a directory follows
    exactly the rule of a tarball (modes, links, special files, bounds)."""
    if not src.is_dir():
        raise SourceError(f"{src} does not exist or is not a directory; check rootfs.directory.", source=str(src))
    dest.mkdir(parents=True)
    try:
        with tempfile.TemporaryFile(dir=dest.parent) as tmp:
            count = total = 0
            with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for dirpath, dirnames, filenames in os.walk(src, onerror=_raise):
                    dirnames.sort()
                    for n in sorted(dirnames + filenames):
                        full = os.path.join(dirpath, n)
                        rel = os.path.relpath(full, src)
                        count += 1
                        if count > MAX_TREE_ENTRIES:
                            raise SourceError(f"{src} holds more than {MAX_TREE_ENTRIES:,} entries (docs/limits.md); "
                                              f"a root filesystem this large is refused.", source=str(src))
                        st = os.lstat(full)
                        if stat.S_ISSOCK(st.st_mode):
                            raise SourceError(f"{src} contains the socket {rel!r}; refusing to copy special files "
                                              f"into a root filesystem.", source=str(src))
                        info = tf.gettarinfo(full, arcname=rel)
                        if info.isreg():
                            total += info.size
                            if total > MAX_ROOTFS_UNPACKED_BYTES:
                                raise SourceError(f"{src} holds more than {MAX_ROOTFS_UNPACKED_BYTES:,} bytes of "
                                                  f"files (docs/limits.md); refusing it.", source=str(src))
                            with open(full, "rb") as f:
                                tf.addfile(info, f)
                        else:
                            tf.addfile(info)
            tmp.seek(0)
            writer = TreeWriter(dest, owner=str(src), unit="directory", keep_absolute_links=True, epoch=epoch,
                                max_members=MAX_TREE_ENTRIES, max_bytes=MAX_ROOTFS_UNPACKED_BYTES,
                                limit_why="any root filesystem this tool builds")
            with tarfile.open(fileobj=tmp, mode="r|", tarinfo=BoundedTarInfo) as tf:
                writer.apply(tf)
            writer.finish()
    except OSError as e:
        remove_tree(dest)
        raise SourceError(f"{src}: cannot copy {e.filename or 'it'} into the root filesystem ({e.strerror or e}); "
                          f"check its permissions and the free space.", source=str(src)) from None
    except BaseException:
        remove_tree(dest)
        raise


def extract_source_tree(recipe: Recipe, dest: os.PathLike | str) -> None:
    """The tree a ``directory`` or ``tarball`` rootfs source extracts to, written to ``dest``
    (which must not exist; removed on error).  Its :func:`~builder.rootfs_tree.tree_digest`
    is the source's lock pin."""
    spec = recipe.rootfs
    assert spec is not None and spec.source in ("directory", "tarball")
    path = rootfs_path(recipe)
    if spec.source == "tarball":
        extract_tarball(path, dest, epoch=recipe.source_date_epoch)
    else:
        _extract_directory(path, Path(dest), recipe.source_date_epoch)


def _mismatch(recipe: Recipe, lock: Lock, what: str, actual: str, expected: str, path: Path) -> InputDigestMismatch:
    spec = recipe.rootfs
    assert spec is not None
    lock_file = lock.path or recipe.lock_path
    return InputDigestMismatch(
        f"input 'rootfs' ({spec.describe()}, pinned in {lock_file}) has changed: its {what} is {actual}, not the "
        f"pinned {expected}. If the change is intended, run `blindbox lock {recipe.path} --update --input rootfs` "
        f"(this changes the launch measurement); otherwise restore the original.",
        source=str(path), expected=expected, actual=actual, path=str(path))


def _pin(recipe: Recipe, lock: Lock, kind: str):
    entry = lock.get("rootfs")
    if entry is None or entry.kind != kind:
        raise RootfsError(f"{lock.path or recipe.lock_path} does not pin the root filesystem as the recipe declares "
                          f"it; run `blindbox lock {recipe.path}`.")
    return entry


def _from_oci(recipe: Recipe, lock: Lock, dest: Path) -> tuple[list[RootfsSource], OciImage]:
    spec = recipe.rootfs
    assert spec is not None
    entry = _pin(recipe, lock, "oci")
    path = rootfs_path(recipe)
    image = read_oci_image(path, ref=spec.ref)
    digest = (image.manifest_digest or image.config.digest).split(":", 1)[1]
    if digest != entry.sha256:
        what = "manifest digest" if image.manifest_digest else "config digest (a `docker save` archive)"
        raise _mismatch(recipe, lock, what, digest, entry.sha256, path)
    apply_oci_layers(image, dest, epoch=recipe.source_date_epoch)
    out = [RootfsSource("oci-config", image.config.media_type, image.config.digest.split(":", 1)[1],
                        image.config.size)]
    out += [RootfsSource("oci-layer", f"layer {n} ({d.media_type})", d.digest.split(":", 1)[1], d.size)
            for n, d in enumerate(image.layers, 1)]
    return out, image


def _from_tree(recipe: Recipe, lock: Lock, dest: Path) -> list[RootfsSource]:
    spec = recipe.rootfs
    assert spec is not None and spec.path is not None
    entry = _pin(recipe, lock, "tree")
    extract_source_tree(recipe, dest)
    digest = tree_digest(dest)
    if digest != entry.sha256:
        raise _mismatch(recipe, lock, "tree digest (docs/recipes.md, canonical listing)", digest, entry.sha256,
                        rootfs_path(recipe))
    return [RootfsSource("tree", spec.path, digest, entry.size)]


def _from_debian(recipe: Recipe, lock: Lock, inputs: dict[str, Path], dest: Path) -> list[RootfsSource]:
    entries = [e for e in lock.inputs if e.name.startswith("rootfs:")]
    if not entries:
        raise RootfsError(f"{lock.path or recipe.lock_path} pins no package of the root filesystem; run "
                          f"`blindbox lock {recipe.path}`.")
    dest.mkdir(parents=True)
    writer = TreeWriter(dest, owner="the root filesystem's Debian packages", unit="package",
                        keep_absolute_links=True, epoch=recipe.source_date_epoch, max_members=MAX_TREE_ENTRIES,
                        max_bytes=MAX_ROOTFS_UNPACKED_BYTES, limit_why="any root filesystem this tool builds")
    apply_pinned_debs(entries, inputs, writer, error=RootfsError, caller="assemble_rootfs")
    writer.finish()
    return [RootfsSource("debian", e.name.split(":", 1)[1], e.sha256, e.size, e.version) for e in entries]


def apply_pinned_debs(entries: list[LockedInput], inputs: dict[str, Path], writer: TreeWriter, *,
                      error: type[BuildError], caller: str) -> None:
    """Lay the pinned packages' data trees onto ``writer`` in lock order (sorted by package name),
    each .deb checked against its pin first; ``inputs`` maps the entry's name to its .deb."""
    for entry in entries:
        deb = inputs.get(entry.name)
        if deb is None:
            raise error(f"the .deb of {entry.name!r} ({entry.describe()}) was not fetched; this is a bug "
                        f"in the caller of {caller}.")
        actual = file_digest(deb, "package").hex()
        if actual != entry.sha256:
            raise InputDigestMismatch(
                f"input {entry.name!r} ({entry.describe()}): {deb} has sha256 {actual}, not the pinned {entry.sha256}; "
                f"the file is not the package the lock pins, so fetch it again (the cache verifies what it serves).",
                source=str(deb), expected=entry.sha256, actual=actual, path=str(deb))
        apply_deb(deb, writer, where=f"{deb} ({entry.name.split(':', 1)[1]} {entry.version})")


# --------------------------------------------------------------------------------------
# files over the source, mount points, directories
# --------------------------------------------------------------------------------------

def _make_dirs(root: Path, path: str, what: str, *, mount_point: bool = False) -> Path:
    """Create the directories of the absolute ``path`` inside ``root`` (mode 0755) without following a
    symlink; refuse, naming it, a component that exists as something else (with ``mount_point``,
    saying that the init mounts a file system on ``path``)."""
    cur = root
    for part in [p for p in path.split("/") if p]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            os.chmod(cur, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a file"
            raise RootfsError(f"{what}: /{cur.relative_to(root)} is {kind} in the root filesystem, not a directory; "
                              f"use the path it leads to, or remove it from the source.")
    return cur


def _copy(src: Path, dst: Path, what: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    try:
        with open(src, "rb") as f, open(dst, "xb") as out:
            while chunk := f.read(_CHUNK):
                size += len(chunk)
                if size > MAX_ROOTFS_UNPACKED_BYTES:
                    raise RootfsError(f"{what}: {src} is larger than {MAX_ROOTFS_UNPACKED_BYTES:,} bytes "
                                      f"(docs/limits.md); refusing it.")
                h.update(chunk)
                out.write(chunk)
    except OSError as e:
        raise RootfsError(f"{what}: cannot read {src} ({e.strerror or e}).") from None
    return h.hexdigest(), size


def _overlay_files(recipe: Recipe, spec: RootfsSpec, inputs: dict[str, Path], root: Path) -> list[RootfsSource]:
    out = []
    for f in spec.files:
        what = f"{recipe.path}:{f.line}: rootfs.files {f.path}"
        parent, base = posixpath.split(f.path)
        target = _make_dirs(root, parent, what) / base
        try:
            st = os.lstat(target)
            if stat.S_ISDIR(st.st_mode):
                raise RootfsError(f"{what}: the source has a directory there; choose another path.")
            os.unlink(target)           # a file or symlink of the source is replaced, never followed
        except FileNotFoundError:
            pass
        if f.content is not None:
            with open(target, "xb") as fh:
                fh.write(f.content)
            digest, size = hashlib.sha256(f.content).hexdigest(), len(f.content)
        else:
            assert f.source is not None  # a file entry has content or a source
            src = inputs.get(f.source.name)
            if src is None:
                raise RootfsError(f"{what}: its input {f.source.name!r} was not fetched; this is a bug in the caller "
                                  f"of assemble_rootfs.")
            digest, size = _copy(Path(src), target, what)
        os.chmod(target, f.mode & 0o777)
        out.append(RootfsSource("file", f.path, digest, size))
    return out


def _mount_points(root: Path, where: str) -> None:
    for m in ROOTFS_MOUNT_POINTS:
        p = root / m.lstrip("/")
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            os.mkdir(p, 0o755)
            os.chmod(p, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a file"
            raise RootfsError(f"{where}: the root filesystem has {m} as {kind}, but the init mounts a file system "
                              f"there, so it must be a directory; remove {m} from the source (it is created empty).")


def _settle_times(root: Path, epoch: int) -> None:
    """Every entry's mtime is the epoch again (creating files changed their directories')."""
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


# --------------------------------------------------------------------------------------
# how the application starts
# --------------------------------------------------------------------------------------

def _account_db(root: Path, name: str, where: str) -> list[list[str]]:
    """The colon-separated lines of /etc/passwd or /etc/group of the tree (empty if it has none)."""
    p = resolve_inside(root, name)
    if p is None or not p.exists() or not stat.S_ISREG(os.lstat(p).st_mode):
        return []
    try:
        size = os.lstat(p).st_size
        if size > MAX_ACCOUNT_DB_BYTES:
            raise RootfsError(f"{where}: the root filesystem's {name} has {size:,} bytes, more than "
                              f"{MAX_ACCOUNT_DB_BYTES:,}; give a numeric uid:gid instead.")
        with open(p, "rb") as f:
            data = f.read(MAX_ACCOUNT_DB_BYTES + 1)
    except OSError as e:
        raise RootfsError(f"{where}: cannot read the root filesystem's {name} ({e.strerror or e}).") from None
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines()
            if line and not line.startswith("#")]


def _lookup(db: list[list[str]], name: str) -> list[str] | None:
    return next((row for row in db if row[0] == name and len(row) >= 3 and row[2].isdigit()), None)


def _resolve_user(user: str, root: Path, where: str) -> tuple[int, int]:
    if not user:
        return 0, 0
    who, _, group = user.partition(":")
    passwd = [row for row in _account_db(root, "/etc/passwd", where) if len(row) >= 4 and row[3].isdigit()]
    if who.isdigit():
        uid = int(who)
        row = next((r for r in passwd if r[2].isdigit() and int(r[2]) == uid), None)
        gid = int(row[3]) if row is not None else 0
    else:
        row = _lookup(passwd, who)
        if row is None:
            raise RootfsError(f"{where}: user {who!r} is not in the root filesystem's /etc/passwd; give a numeric "
                              f"uid (e.g. user: \"1000:1000\") or add the user to the image.")
        uid, gid = int(row[2]), int(row[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            grow = _lookup(_account_db(root, "/etc/group", where), group)
            if grow is None:
                raise RootfsError(f"{where}: group {group!r} is not in the root filesystem's /etc/group; give a "
                                  f"numeric gid or add the group to the image.")
            gid = int(grow[2])
    if uid > _MAX_ID or gid > _MAX_ID:
        raise RootfsError(f"{where}: user {user!r} gives an id above {_MAX_ID}; give ids the kernel accepts.")
    return uid, gid


def _find_program(root: Path, prog: str, workdir: str, path_env: str, where: str) -> str:
    if "/" in prog:
        candidates = [posixpath.normpath(posixpath.join(workdir, prog))]
    else:
        candidates = [posixpath.join(d, prog) for d in path_env.split(":") if d.startswith("/")]
    for cand in candidates:
        real = resolve_inside(root, cand)
        if real is None:
            continue
        try:
            st = os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return cand
    looked = candidates[0] if len(candidates) == 1 else f"the PATH {path_env}"
    raise RootfsError(f"{where}: the program {prog!r} is not an executable file in the root filesystem (looked "
                      f"for it at {looked}, following symlinks inside the root); fix rootfs.entrypoint or "
                      f"rootfs.cmd, or add the program to the source.")


def resolve_app(recipe: Recipe, image: OciImage | None, root: os.PathLike | str) -> AppConfig:
    """The start settings of the application: the recipe's overrides over the image's config,
    resolved against the tree at ``root`` (the working directory is created there if missing)."""
    spec = recipe.rootfs
    assert spec is not None
    root = Path(root)
    where = _where(recipe)
    entrypoint = spec.entrypoint if spec.entrypoint is not None else (image.entrypoint if image else ())
    if spec.cmd is not None:
        cmd = spec.cmd
    elif spec.entrypoint is not None or image is None:
        cmd = ()                     # a new entrypoint drops the image's Cmd, as docker does
    else:
        cmd = image.cmd
    argv = tuple(entrypoint) + tuple(cmd)
    if not argv:
        have = "the image has no Entrypoint or Cmd" if image else f"a {spec.source} source has no start settings"
        raise RootfsError(f"{where}: nothing to run: {have}; write rootfs.entrypoint (and rootfs.cmd), e.g. "
                          f"entrypoint: [/usr/bin/python3, /srv/app.py].")
    bad = next((a for a in argv if "\0" in a), None)
    if bad is not None:
        raise RootfsError(f"{where}: the image's Entrypoint or Cmd holds the argument {bad!r} with a NUL byte, "
                          f"which no program argument can hold; set rootfs.entrypoint and rootfs.cmd.")
    env: list[tuple[str, str]] = []
    for item in image.env if image else ():
        name, eq, value = item.partition("=")
        if not eq or not _ENV_NAME.fullmatch(name) or "\0" in value:
            raise RootfsError(f"{where}: the image's Env entry {item[:80]!r} is not NAME=value (a name of letters, "
                              f"digits and '_', a value without NUL); fix the image or its config.")
        env = [(n, v) for n, v in env if n != name] + [(name, value)]
    for name, value in spec.env:
        if any(n == name for n, _ in env):
            env = [(n, value if n == name else v) for n, v in env]
        else:
            env.append((name, value))
    if not any(n == "PATH" for n, _ in env):
        env.append(("PATH", DEFAULT_PATH))
    workdir = spec.workdir or (image.working_dir if image and image.working_dir else "/")
    if not workdir.startswith("/"):
        raise RootfsError(f"{where}: the image's WorkingDir {workdir!r} is not an absolute path; set "
                          f"rootfs.workdir.")
    workdir = posixpath.normpath(workdir).replace("//", "/")
    resolved = resolve_inside(root, workdir)
    if resolved is None:
        raise RootfsError(f"{where}: the working directory {workdir} leads outside the root filesystem through a "
                          f"symlink; set rootfs.workdir to a directory inside it.")
    rel = os.path.relpath(resolved, root)
    _make_dirs(root, "/" if rel == "." else "/" + rel, f"{where}.workdir")
    path_env = next(v for n, v in env if n == "PATH")
    argv = (_find_program(root, argv[0], workdir, path_env, where),) + argv[1:]
    user = spec.user if spec.user is not None else (image.user if image else "")
    uid, gid = _resolve_user(user, root, where)
    return AppConfig(argv=argv, env=tuple(env), workdir=workdir, uid=uid, gid=gid)


# --------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------

def assemble_rootfs(recipe: Recipe, lock: Lock, inputs: dict[str, Path], dest: Path) -> RootfsTree:
    """The complete root filesystem of ``recipe`` in ``dest`` (which must not exist).

    ``inputs`` maps lock entry names to fetched files: ``rootfs:<package>`` to its .deb and
    each ``rootfs_file:<path>`` source to its file; OCI images, directories and tarballs
    are read from the recipe's directory and checked against their pins.  On any error
    ``dest`` is removed and the exception propagates (RootfsError, SourceError,
    InputDigestMismatch: exit status 2).
    """
    spec = recipe.rootfs
    if spec is None:
        raise RootfsError(f"{recipe.path} has no rootfs section; there is no root filesystem to assemble.")
    dest = Path(dest)
    if os.path.lexists(dest):
        raise RootfsError(f"Cannot assemble the root filesystem into {dest}: it exists; pass a new directory.")
    try:
        image = None
        if spec.source == "oci":
            sources, image = _from_oci(recipe, lock, dest)
        elif spec.source == "debian":
            sources = _from_debian(recipe, lock, inputs, dest)
        else:
            sources = _from_tree(recipe, lock, dest)
        sources += _overlay_files(recipe, spec, inputs, dest)
        _mount_points(dest, _where(recipe))
        app = resolve_app(recipe, image, dest)
        _settle_times(dest, recipe.source_date_epoch)
        return RootfsTree(root=dest, app=app, sources=tuple(sources), tree_sha256=tree_digest(dest))
    except BaseException:
        remove_tree(dest)
        raise
