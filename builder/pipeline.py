"""build(): a recipe and its lock file -> a bundle directory, as a flat list of named steps.

======== ===================================================================================
step     what it does
======== ===================================================================================
recipe   parse the recipe, read the lock, refuse a lock that does not pin what it declares
current  stop early when the bundle already holds this recipe + lock, built by this version
fetch    fetch every pinned input (cache first), verify its sha256
firmware take the OVMF image; refuse one without SEV metadata, SNP_KERNEL_HASHES or hashes table
kernel   unpack the kernel package, take the bzImage, check its config (preflight)
rootfs   with a recipe rootfs: the application's tree (builder.steps.rootfs), its EROFS image
         (builder.steps.erofs) and dm-verity hash device (measure.verity), salt and UUIDs
         derived from the recipe and lock digests
agent    with a recipe agent: the attestation agent's tree (builder.steps.agent): its pinned
         Python and openssl packages and this blindbox's agent code
initrd   the deterministic initrd: busybox, init, modules, files, binaries and libraries (with a
         rootfs: dmsetup, the verity and disk modules, and the init that verifies the root and
         switch_roots into the application; with an agent: its tree under /agent, started before
         the application; with a runtime policy: its canonical JSON, its nft rule set, Debian's nft,
         nf_tables and nft_ct, and the init that loads the rules before the agent and the application)
cmdline  the command line bytes (the recipe's; with a simulated attester ``blindbox.attester=...``;
         with a runtime policy ``blindbox.runtime_policy=<sha256>``; with a rootfs
         ``blindbox.root="<verity table>"``)
measure  launch digests for every shape, the firmware hashed once (measure.snp.SnpLaunch)
idblock  with a recipe id_block: ID_BLOCK and ID_AUTH_INFO for every shape (deterministic ECDSA)
launch   launch-snp.sh
manifest manifest.json, and provenance.intoto.json beside it (blindbox.audit.provenance)
write    the bundle, atomically (builder.bundle)
======== ===================================================================================

Each step is a function of the :class:`Build` state; none prints.  The verity table joins
the command line before it is measured, so every launch digest covers every byte of the
application's root filesystem.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

from builder import sources
from builder.bundle import MANIFEST, BundleError, write_bundle
from builder.errors import BuildError, InputDigestMismatch, OfflineMiss, SourceError, SourceGone
from builder.limits import MAX_INITRD_FILE_BYTES, MAX_KERNEL_BYTES
from builder.lock import Lock, LockedInput, LockMismatch, check_lock, read_lock
from builder.progress import current as current_progress
from builder.manifest import InputRecord, Manifest, ManifestError, MeasurementRecord, OutputRecord
from builder.recipe import MAX_CMDLINE, FileEntry, Recipe, check_id_keys, load_id_key, load_recipe, local_path
from measure import __version__
from measure.cpu import CPU_SIGS
from measure.errors import MeasureError, UnsupportedFirmware
from measure.inputs import read_bounded, read_input
from measure.limits import MAX_FIRMWARE_BYTES
from blindbox.audit.limits import MAX_MANIFEST_BYTES
from blindbox.audit.provenance import PROVENANCE, provenance_json
from measure import verity
from measure.runtime_policy import CMDLINE_PARAM as RUNTIME_POLICY_PARAM
from measure.runtime_policy import cmdline_word, manifest_record
from measure.kernel_hashes import KernelHashes, cmdline_bytes
from measure.ovmf import Firmware
from measure.snp import SnpLaunch, VmShape
from measure.spec import SectionType
from measure.vmm import PROFILES

if TYPE_CHECKING:  # imported by the steps that use them
    from builder.steps.agent import AgentTree
    from builder.steps.initrd import Initrd, RuntimePolicyFiles
    from builder.steps.kernel import KernelImage, PreflightReport
    from builder.steps.rootfs import RootfsTree

TOOL = {"name": "blindbox-guest", "version": __version__}
KERNEL_FILE = "bzImage"
INITRD_FILE = "initrd"
CMDLINE_FILE = "cmdline"
LAUNCH_FILE = "launch-snp.sh"
ROOTFS_FILE = "rootfs.erofs"
VERITY_FILE = "rootfs.verity"
#: the recipe's rootfs.on_corruption -> the verity table's options
CORRUPTION_OPTIONS = {"eio": (), "restart": ("restart_on_corruption",), "panic": ("panic_on_corruption",)}
#: per shape, with a recipe id_block: "<shape id, ':' -> '_'>" + suffix -> (manifest role, encoding)
ID_FILES = {".id-block.b64": ("id-block", "base64"), ".id-auth.b64": ("id-auth", "base64"),
            ".id-block.bin": ("id-block-bin", "raw"), ".id-auth.bin": ("id-auth-bin", "raw")}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class RootfsBuild:
    """What the rootfs step made: the tree, its image and hash device (in the work directory), the table."""

    tree: RootfsTree
    image: Path
    hashes: Path
    erofs_uuid: str
    verity: verity.VerityTree
    table: str


class FirmwareRefused(BuildError):
    """The recipe's firmware cannot do what the recipe asks (measured direct boot under SNP)."""


@dataclass(frozen=True)
class BuildRequest:
    recipe: Path
    out: Path | None = None          # default: ./out/<name>
    offline: bool = False
    allow_stale: tuple[str, ...] = ()
    force: bool = False              # rebuild even when the bundle is current
    cache_root: Path | None = None   # default: builder.sources.cache_root()
    inputs: Path | None = None       # a directory written by `blindbox vendor`: the pinned inputs, verified


@dataclass
class Build:
    """The state the steps share; a field with init=False is set by the step named beside it."""

    request: BuildRequest
    recipe: Recipe = field(init=False)                           # step_recipe
    lock: Lock = field(init=False)                               # step_recipe
    out: Path = field(init=False)                                # step_recipe
    cache: sources.ContentCache = field(init=False)              # build()
    archive: sources.DebianArchive = field(init=False)           # build()
    work: Path = field(init=False)                               # build()
    inputs: dict[str, Path] = field(default_factory=dict)        # name -> fetched file (or tree)
    packages: dict[str, sources.DebianPackage] = field(default_factory=dict)
    firmware: Firmware = field(init=False)                       # step_firmware
    firmware_file: str = field(init=False)                       # step_firmware
    firmware_bytes: bytes = b""
    kernel: KernelImage = field(init=False)                      # step_kernel
    kernel_bytes: bytes = b""
    preflight: PreflightReport | None = field(default=None, init=False)  # step_kernel
    rootfs: RootfsBuild | None = field(default=None, init=False)  # step_rootfs
    agent: AgentTree | None = field(default=None, init=False)    # step_agent
    initrd: Initrd | None = field(default=None, init=False)      # step_initrd
    cmdline: bytes = b""
    hashes: KernelHashes = field(init=False)                     # step_measure
    ovmf_hash: bytes = b""
    measurements: list[MeasurementRecord] = field(default_factory=list)
    id_files: dict[str, tuple[bytes, str]] = field(default_factory=dict)   # file -> (bytes, manifest role)
    launch_script: bytes = b""
    manifest: Manifest = field(init=False)                       # step_current or step_manifest
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    large_files: dict[str, Path] = field(default_factory=dict)    # bundle file -> work file (the root's image)
    current: bool = False                                        # the bundle was already up to date
    timings: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class BuildResult:
    out: Path
    manifest: Manifest
    up_to_date: bool
    timings: tuple[tuple[str, float], ...]
    preflight: tuple[str, ...] = ()
    downloaded: tuple[str, ...] = ()
    initrd_listing: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------

def step_recipe(b: Build) -> None:
    b.recipe = load_recipe(b.request.recipe)
    b.lock = read_lock(b.recipe.lock_path)
    check_lock(b.recipe, b.lock)
    check_id_keys(b.recipe)
    b.out = Path(os.path.abspath(b.request.out or Path("out") / b.recipe.name))
    _refuse_out_holding_inputs(b)


def _refuse_out_holding_inputs(b: Build) -> None:
    """The bundle directory is replaced as a whole: it must not be, or hold, one of the build's inputs,
    nor lie inside the root filesystem's source directory (the build would change its own input)."""
    out = os.path.realpath(b.out)
    inputs = [("recipe", b.recipe.path), ("lock file", b.lock.path or b.recipe.lock_path)]
    inputs += [(f"local input {s.name!r}", b.recipe.directory / s.file) for s in b.recipe.inputs()
               if s.kind == "file" and s.file is not None]
    if b.recipe.rootfs is not None and b.recipe.rootfs.path is not None:
        source = b.recipe.directory / b.recipe.rootfs.path
        inputs.append((f"root filesystem source {b.recipe.rootfs.path!r}", source))
        real = os.path.realpath(source)
        if os.path.isdir(real) and os.path.commonpath([out, real]) == real:
            raise BundleError(f"--out {b.out} lies inside the root filesystem source {source}; the bundle would "
                              f"become part of the next build's input, so choose an --out directory outside it.")
    for what, path in inputs:
        real = os.path.realpath(path)
        if os.path.commonpath([out, real]) == out:
            raise BundleError(f"--out {b.out} is or contains the {what} {path}; writing the bundle there would "
                              f"replace it, so choose an --out directory outside the recipe's files.")


def _local_file(b: Build, entry: LockedInput) -> Path:
    """The recipe's local file a lock entry pins, refused if it resolves outside the recipe's directory."""
    spec = next(s for s in b.recipe.inputs() if s.name == entry.name)   # check_lock matched them
    return local_path(b.recipe, spec)


def _local_inputs_unchanged(b: Build) -> bool:
    for entry in b.lock.inputs:
        if entry.kind == "file":
            p = _local_file(b, entry)
            if not p.is_file() or sources.sha256_file(p) != entry.sha256:
                return False
        elif entry.kind in ("oci", "tree"):   # the root's source, read from the recipe's directory
            from builder.lock import resolve_rootfs

            try:
                now = resolve_rootfs(b.recipe, b.archive)
            except (BuildError, MeasureError):
                return False                   # the build says what is wrong with it
            if [(e.name, e.sha256) for e in now] != [(entry.name, entry.sha256)]:
                return False
    return True


def step_current(b: Build) -> None:
    """A no-op rebuild: same recipe, lock and tool, intact outputs -> nothing to do."""
    if b.request.force:
        return
    path = b.out / MANIFEST
    try:
        data = read_bounded(path, "manifest", MAX_MANIFEST_BYTES)
        manifest = Manifest.from_json(data, str(path))
        provenance = (b.out / PROVENANCE).read_bytes()
    except (OSError, MeasureError, ManifestError):
        return
    if provenance != provenance_json(manifest.to_dict(), data):
        return
    if (manifest.recipe.get("sha256") != b.recipe.sha256 or manifest.lock.get("sha256") != b.lock.sha256
            or manifest.tool.get("version") != TOOL["version"] or manifest.name != b.recipe.name):
        return
    expected = {o.file: o for o in manifest.outputs}
    present = {p.name for p in b.out.iterdir()} - {MANIFEST, PROVENANCE}
    if present != set(expected):
        return
    for name, rec in expected.items():
        p = b.out / name
        if p.stat().st_size != rec.size or sources.sha256_file(p, "bundle") != rec.sha256:
            return
    if not _local_inputs_unchanged(b):
        return
    b.manifest = manifest
    b.current = True


def _fix_hint(b: Build, entry: LockedInput) -> str:
    return (f"To pin what the source serves now, run `blindbox lock {b.recipe.path} --update --input "
            f"{entry.name}`; that changes the bundle and therefore every launch digest in its manifest, "
            f"so publish the new manifest.")


def _is_id_key(b: Build, name: str) -> bool:
    return b.recipe.id_block is not None and name in {k.name for k in b.recipe.id_block.keys()}


def _fetch_error(b: Build, entry: LockedInput, e: SourceError) -> SourceError:
    where = f"input {entry.name!r} ({entry.describe()}, pinned in {b.lock.path or b.recipe.lock_path})"
    if isinstance(e, OfflineMiss):
        msg = f"{where} is not in the cache and --offline forbids fetching it: {e} "
    elif isinstance(e, SourceGone):
        msg = f"{where} is no longer served and not in the cache: {e} {_fix_hint(b, entry)}"
    elif isinstance(e, InputDigestMismatch) and _is_id_key(b, entry.name):
        msg = (f"{where} has changed: {e.path} has sha256 {e.actual}, not the pinned {e.expected}; if the new "
               f"key is intended, run `blindbox lock {b.recipe.path} --update --input {entry.name}` (this "
               f"changes the ID blocks and the key digest that reports carry, not the launch measurement), "
               f"otherwise restore the original key.")
    elif isinstance(e, InputDigestMismatch):
        msg = (f"{where} has changed: {e} If the change is intended, run `blindbox lock {b.recipe.path} "
               f"--update --input {entry.name}` (this changes the launch measurement); otherwise restore "
               f"the original.")
    else:
        msg = f"{where} cannot be fetched: {e}"
    try:
        if isinstance(e, InputDigestMismatch):
            return type(e)(msg, source=e.source, expected=e.expected, actual=e.actual, path=e.path)
        return type(e)(msg, source=e.source)
    except TypeError:  # a subclass with another signature
        return SourceError(msg, source=e.source)


def _member_of(b: Build, name: str) -> str | None:
    for spec in b.recipe.inputs():
        if spec.name == name:
            return spec.member
    return None


def _prepare_sources(b: Build) -> dict[str, Path]:
    """The lock's snapshot archive as the Debian archive's fallback, and the vendored inputs (verified, in the
    cache) of ``--inputs``: the local files among them by name."""
    if b.lock.snapshot is not None and hasattr(b.archive, "fallback"):
        from builder.sources.snapshot import fallback

        b.archive.fallback = fallback(b.lock.snapshot, b.cache)
    if b.request.inputs is None:
        return {}
    from builder.sources.vendor import seed

    return seed(b.lock, b.request.inputs, b.cache)


def step_fetch(b: Build) -> None:
    vendored = _prepare_sources(b)
    for entry in b.lock.inputs:
        current_progress().step(f"fetch {entry.name}")      # which input (and how long, when it is slow)
        try:
            if entry.kind == "debian":
                assert entry.debian is not None  # LockedInput.from_dict requires it
                pkg = sources.DebianPackage.from_dict(entry.debian)
                b.packages[entry.name] = pkg
                _check_size(b, entry, b.archive.download(pkg))
                member = _member_of(b, entry.name)
                if entry.name.startswith(("rootfs:", "agent:")):   # its data.tar is applied onto a tree
                    b.inputs[entry.name] = b.archive.download(pkg)
                elif member is not None:
                    b.inputs[entry.name] = b.archive.member(pkg, member)
                else:
                    b.inputs[entry.name] = b.archive.unpack(pkg)
            elif entry.kind in ("oci", "tree"):
                continue  # read from the recipe's directory and checked against its pin by step_rootfs
            elif entry.kind == "file" and entry.name in vendored:
                b.inputs[entry.name] = vendored[entry.name]
            elif entry.kind == "file":
                b.inputs[entry.name] = sources.local_file(_local_file(b, entry), entry.sha256)
            else:
                assert entry.url is not None  # LockedInput.from_dict requires it
                b.inputs[entry.name] = sources.fetch_url(entry.url, entry.sha256, cache=b.cache,
                                                         offline=b.request.offline)
            if entry.kind != "debian":
                _check_size(b, entry, b.inputs[entry.name])
        except SourceError as e:
            raise _fetch_error(b, entry, e) from e


def _check_size(b: Build, entry: LockedInput, path: Path) -> None:
    """The lock's size of an input must be the size of the bytes fetched for it (the manifest publishes it)."""
    actual = os.path.getsize(path)
    if actual != entry.size:
        raise LockMismatch(
            f"{b.lock.path or b.recipe.lock_path} pins input {entry.name!r} ({entry.describe()}) with size "
            f"{entry.size}, but its verified bytes are {actual} bytes long; the lock file was edited by hand. "
            f"Restore it from version control or run `blindbox lock {b.recipe.path}` again.")


def check_firmware(fw: Firmware, what: str) -> None:
    """Refuse firmware that cannot launch an SNP guest with kernel, initrd and cmdline measured."""
    if not fw.sections:
        raise FirmwareRefused(
            f"{what} has no SEV metadata, so QEMU cannot launch it as an SEV-SNP guest. This recipe needs "
            f"an OVMF built for measured direct boot: Debian sid's ovmf-amdsev (/usr/share/ovmf/OVMF.amdsev.fd).")
    if not fw.has_section(SectionType.SNP_KERNEL_HASHES) or fw.hashes_table() is None:
        missing = ("SNP_KERNEL_HASHES metadata section" if not fw.has_section(SectionType.SNP_KERNEL_HASHES)
                   else "SEV hashes table entry")
        raise FirmwareRefused(
            f"{what} has SEV metadata but no {missing}, so QEMU cannot put the kernel, initrd and command "
            f"line hashes into the launch digest (kernel-hashes=on) and the guest would not be measured as "
            f"the recipe asks. Use Debian sid's ovmf-amdsev (/usr/share/ovmf/OVMF.amdsev.fd).")
    try:
        fw.require_sev_es_reset_eip()
    except UnsupportedFirmware as e:
        raise FirmwareRefused(f"{what}: {e}") from None


def step_firmware(b: Build) -> None:
    path = b.inputs["firmware"]
    data = read_input(path, "firmware", limit=MAX_FIRMWARE_BYTES)
    spec = b.recipe.firmware
    entry = b.lock.get("firmware")
    source = spec.member or spec.file or spec.url
    assert entry is not None and source is not None  # check_lock and the recipe's validation
    what = f"the firmware {source} ({entry.describe()})"
    try:
        fw = Firmware(data, name=what)
    except MeasureError as e:
        raise FirmwareRefused(f"{e}") from None
    check_firmware(fw, what)
    base = source.rsplit("/", 1)[-1]
    b.firmware_file = base if _SAFE_NAME.fullmatch(base) and base not in (
        KERNEL_FILE, INITRD_FILE, CMDLINE_FILE, LAUNCH_FILE, MANIFEST, PROVENANCE) else "firmware.fd"
    b.firmware, b.firmware_bytes = fw, data


def step_kernel(b: Build) -> None:
    from builder.steps import kernel as ksteps

    b.kernel = ksteps.find_kernel(b.inputs["kernel"])
    config = ksteps.KernelConfig.load(b.kernel.config)
    extra = tuple(ksteps.Requirement((o[len("CONFIG_"):],), "the recipe's kernel.require_config")
                  for o in b.recipe.kernel.require_config)
    required = ksteps.REQUIRED + ksteps.decompressor_requirement(b.recipe.initrd.compression) + extra
    if b.recipe.rootfs is not None and b.recipe.rootfs.network:
        required += ksteps.network_requirement()
    b.preflight = ksteps.preflight(config, required)
    entry = b.lock.get("kernel")
    assert entry is not None  # check_lock: every declared input is pinned
    b.preflight.raise_if_failed(f"the kernel {entry.describe()}")
    b.kernel_bytes = read_input(b.kernel.bzimage, "kernel", limit=MAX_KERNEL_BYTES)


def _materialize(b: Build, entry: FileEntry, label: str) -> Path:
    if entry.content is not None:
        p = b.work / "inline" / hashlib.sha256(label.encode()).hexdigest()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(entry.content)
        return p
    assert entry.source is not None  # a file entry has content or a source
    return Path(b.inputs[entry.source.name])


def _merge_trees(trees: list[Path], dest: Path) -> Path:
    """One directory with the files of every tree (first tree wins), by hard links where possible."""
    for tree in trees:
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            rel = os.path.relpath(dirpath, tree)
            target_dir = dest / rel
            target_dir.mkdir(parents=True, exist_ok=True)
            for n in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                src = Path(dirpath) / n
                dst = target_dir / n
                if dst.exists() or dst.is_symlink():
                    continue
                if src.is_symlink():
                    os.symlink(os.readlink(src), dst)
                else:
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copy2(src, dst)
    return dest


def step_initrd(b: Build) -> None:
    from builder.steps.initrd import build_initrd

    spec = b.recipe.initrd
    init_script = None
    if spec.init is not None:
        init_script = read_input(_materialize(b, spec.init, "init"), "init script", limit=MAX_INITRD_FILE_BYTES)
    files = [(_materialize(b, f, f"file:{f.path}"), f.path, f.mode) for f in spec.files]
    binaries = []
    if spec.binaries:
        trees = [b.archive.unpack(b.packages[x.source.name]) for x in spec.binaries]
        trees += [b.archive.unpack(b.packages[e.name]) for e in b.lock.inputs if e.name.startswith("library:")]
        sysroot = _merge_trees(trees, b.work / "sysroot")
        binaries = [(sysroot / x.path.lstrip("/"), x.dest, sysroot) for x in spec.binaries]
    modules = list(spec.modules)
    app = None
    if b.rootfs is not None:
        from builder.steps.init import NET_MODULES, ROOTFS_MODULES

        network = b.recipe.rootfs is not None and b.recipe.rootfs.network
        modules += [m for m in ROOTFS_MODULES + (NET_MODULES if network else ()) if m not in modules]
        app = (b.rootfs.tree.app, network)
    policy = None
    if b.recipe.runtime_policy is not None:
        policy = _runtime_policy_files(b)
        from builder.steps import nft

        modules += [m for m in nft.NFT_MODULES if m not in modules]
    agent = None
    if b.agent is not None:
        from builder.steps import agent as agent_step
        from builder.steps.init import AgentLaunch

        a = b.recipe.agent
        assert a is not None  # step_agent ran for it
        agent = (b.agent.root, AgentLaunch(listen=a.listen, app=a.app, attester=a.attester_argument,
                                           python=agent_step.PYTHON, launcher=agent_step.LAUNCHER,
                                           openssl=agent_step.OPENSSL))
    b.initrd = build_initrd(
        busybox=b.inputs["busybox"], source_date_epoch=b.recipe.source_date_epoch, compression=spec.compression,
        init_script=init_script, app_command=spec.app_command, kernel_tree=b.kernel.tree,
        kernel_release=b.kernel.release, modules=modules, files=files, binaries=binaries, rootfs_app=app,
        agent=agent, runtime_policy=policy, deflate=_deflate(b) if spec.compression == "gzip" else None)


def _deflate(b: Build):
    """The pinned zlib that compresses a gzip initrd (check_lock made sure the lock pins it)."""
    from builder.steps import deflate

    entry = b.lock.get(deflate.INPUT)
    assert entry is not None and entry.version is not None  # check_lock requires the pin for a gzip initrd
    return deflate.load(b.inputs[entry.name], entry.version, entry.sha256)


class RootRuntimePolicy(BuildError):
    """The application would run as root under a runtime policy (root could remove the rule set)."""


def _runtime_policy_files(b: Build) -> RuntimePolicyFiles:
    """The runtime policy's canonical bytes, nft rule set and init settings; refuses an application that runs as
    uid 0 (it could flush the rules or read the agent's key)."""
    from builder.steps.init import PolicyLaunch
    from builder.steps.initrd import RuntimePolicyFiles
    from builder.steps.nft import render_ruleset
    from builder.recipe import SIMULATED_ATTESTER
    from measure.runtime_policy import canonical_json, runtime_policy_sha256

    spec, rootfs = b.recipe.runtime_policy, b.recipe.rootfs
    assert spec is not None and rootfs is not None and b.rootfs is not None  # the recipe requires a rootfs
    if b.rootfs.tree.app.uid == 0:
        if rootfs.user_line is not None:
            where = f"{b.recipe.path}:{rootfs.user_line}: rootfs.user {rootfs.user!r} runs the application as root"
        else:
            where = f"{b.recipe.path}:{rootfs.line}: the image's default user is root, so the application runs as root"
        raise RootRuntimePolicy(f"{where}, which could remove the rule set of runtime_policy (line {spec.line}) or "
                                f"read the attestation agent's key; set rootfs.user to a non-root uid:gid such as "
                                f"\"65534:65534\".")
    agent = b.recipe.agent
    attester = None
    if agent is not None and agent.attester == "simulated":
        host, port = SIMULATED_ATTESTER.rsplit(":", 1)
        attester = (host, int(port))
    ruleset = render_ruleset(spec.policy, agent_listen=None if agent is None else agent.listen,
                             simulated_attester=attester)
    return RuntimePolicyFiles(canonical_json(spec.policy), ruleset,
                              PolicyLaunch(runtime_policy_sha256(spec.policy).hex(), spec.policy.logs))


def step_agent(b: Build) -> None:
    """The attestation agent's tree (it goes into the initrd, measured with it)."""
    if b.recipe.agent is None:
        return
    from builder.steps.agent import assemble_agent

    b.agent = assemble_agent(b.lock, b.inputs, b.work / "agent", epoch=b.recipe.source_date_epoch)


def step_rootfs(b: Build) -> None:
    """The application's root: its tree, EROFS image and dm-verity hash device, and the table for the cmdline."""
    spec = b.recipe.rootfs
    if spec is None:
        return
    from builder.steps import erofs
    from builder.steps.init import ROOT_DATA_DEVICE, ROOT_HASH_DEVICE
    from builder.steps.rootfs import assemble_rootfs

    tree = assemble_rootfs(b.recipe, b.lock, b.inputs, b.work / "rootfs")
    recipe_sha, lock_sha = b.recipe.sha256, b.lock.sha256
    assert lock_sha is not None  # read_lock records the digest of the bytes it read
    fs_uuid = verity.derived_uuid("erofs", recipe_sha, lock_sha)
    image, hashes = b.work / ROOTFS_FILE, b.work / VERITY_FILE
    # owners are 0:0 whoever builds (the extraction rule never chowns; docs/recipes.md)
    entries = [replace(e, uid=0, gid=0) for e in erofs.entries_from_directory(tree.root)]
    erofs.write_image(entries, image, erofs.ErofsParams(epoch=b.recipe.source_date_epoch, uuid=fs_uuid))
    params = verity.VerityParams(salt=verity.derived_salt(recipe_sha, lock_sha),
                                 uuid=verity.derived_uuid("verity", recipe_sha, lock_sha))
    vtree = verity.format_files(image, hashes, params)
    table = vtree.table(ROOT_DATA_DEVICE, ROOT_HASH_DEVICE, CORRUPTION_OPTIONS[spec.on_corruption])
    b.rootfs = RootfsBuild(tree, image, hashes, str(fs_uuid), vtree, table)


class CmdlineTooLong(BuildError):
    """The measured command line, with the root's verity table, is longer than the kernel takes."""


def _append_cmdline(b: Build, word: str, what: str) -> None:
    """Append `` word`` to the measured command line, refusing a line longer than the kernel keeps."""
    b.cmdline += f" {word}".encode()
    if len(b.cmdline) > MAX_CMDLINE:
        raise CmdlineTooLong(f"the kernel command line with {what} is {len(b.cmdline)} bytes, more than the "
                             f"{MAX_CMDLINE} the kernel keeps; shorten the recipe's cmdline in {b.recipe.path}.")


def step_cmdline(b: Build) -> None:
    b.cmdline = b.recipe.cmdline_bytes
    param = b.recipe.agent.cmdline_parameter if b.recipe.agent is not None else None
    if param is not None:       # a simulation image never has a production image's command line
        _append_cmdline(b, param, param)
    if b.recipe.runtime_policy is not None:    # every launch digest commits to the runtime policy
        _append_cmdline(b, cmdline_word(b.recipe.runtime_policy.policy), f"{RUNTIME_POLICY_PARAM}=<sha256>")
    if b.rootfs is not None:
        word = f'{verity.CMDLINE_PARAM}="{b.rootfs.table}"'
        _append_cmdline(b, word, f"the root filesystem's verity table (which takes {len(word) + 1})")


def step_measure(b: Build) -> None:
    assert b.initrd is not None  # step_initrd ran
    b.hashes = KernelHashes(kernel=hashlib.sha256(b.kernel_bytes).digest(),
                            initrd=hashlib.sha256(b.initrd.data).digest(),
                            cmdline=hashlib.sha256(cmdline_bytes(b.cmdline)).digest())
    launch = SnpLaunch(b.firmware)           # the firmware pages are hashed here, once
    b.ovmf_hash = launch.firmware_digest
    digests: dict[tuple, str] = {}
    for s in b.recipe.shape_sets:
        for vcpu_type in s.vcpu_types:
            for gf in s.guest_features:
                shape = VmShape(max(s.vcpus), CPU_SIGS[vcpu_type], gf, PROFILES[s.vmm_profile])
                for n, m in launch.measure_vcpu_counts(shape, s.vcpus, b.hashes).items():
                    digests[(s.vmm_profile, vcpu_type, gf, n)] = m.digest.hex()
    b.measurements = [
        MeasurementRecord(shape=sh.id, vmm_profile=sh.vmm_profile, vcpus=sh.vcpus, vcpu_type=sh.vcpu_type,
                          vcpu_sig=sh.vcpu_sig, guest_features=sh.guest_features,
                          measurement=digests[(sh.vmm_profile, sh.vcpu_type, sh.guest_features, sh.vcpus)])
        for sh in b.recipe.shapes()]


def shape_file_stem(shape_id: str) -> str:
    """A shape id as a file name: ``qemu:EPYC-v4:4:0x1`` -> ``qemu_EPYC-v4_4_0x1``."""
    stem = shape_id.replace(":", "_")
    assert _SAFE_NAME.fullmatch(stem), stem
    return stem


def step_idblock(b: Build) -> None:
    """ID_BLOCK and ID_AUTH_INFO for every shape, signed with the recipe's keys (RFC 6979)."""
    spec = b.recipe.id_block
    if spec is None:
        return
    # imported here: it loads cryptography (about 40 ms), which a recipe without ID blocks never needs
    from blindbox.audit.idblock import key_digest, make_id_auth
    id_key = load_id_key(b.recipe, spec.id_key, b.inputs[spec.id_key.name])
    author_key = None if spec.author_key is None else \
        load_id_key(b.recipe, spec.author_key, b.inputs[spec.author_key.name])
    id_digest = key_digest(id_key).hex()
    author_digest = None if author_key is None else key_digest(author_key).hex()
    records = []
    for m in b.measurements:
        block, auth = make_id_auth(bytes.fromhex(m.measurement), id_key, author_key, family_id=spec.family_id,
                                   image_id=spec.image_id, guest_svn=spec.guest_svn, policy=spec.policy)
        stem = shape_file_stem(m.shape)
        for suffix, (role, encoding) in ID_FILES.items():
            raw = block if role.startswith("id-block") else auth
            data = base64.b64encode(raw) + b"\n" if encoding == "base64" else raw
            assert stem + suffix not in b.id_files, stem + suffix
            b.id_files[stem + suffix] = (data, role)
        records.append(replace(m, id_block=stem + ".id-block.b64", id_auth=stem + ".id-auth.b64",
                               id_key_digest=id_digest, author_key_digest=author_digest))
    b.measurements = records


def step_launch(b: Build) -> None:
    from builder.launch import LaunchFiles, LaunchShape, render as render_launch   # only a build writes one

    assert b.initrd is not None  # step_initrd ran
    sha = {b.firmware_file: hashlib.sha256(b.firmware_bytes).hexdigest(),
           KERNEL_FILE: hashlib.sha256(b.kernel_bytes).hexdigest(),
           INITRD_FILE: hashlib.sha256(b.initrd.data).hexdigest()}
    sha.update({name: hashlib.sha256(data).hexdigest() for name, (data, _) in b.id_files.items()})
    files = LaunchFiles(b.firmware_file, KERNEL_FILE, INITRD_FILE)
    if b.rootfs is not None:
        files = LaunchFiles(b.firmware_file, KERNEL_FILE, INITRD_FILE, rootfs=ROOTFS_FILE, verity=VERITY_FILE)
        sha[ROOTFS_FILE] = sources.sha256_file(b.rootfs.image, "root filesystem image")
        sha[VERITY_FILE] = sources.sha256_file(b.rootfs.hashes, "verity hash device")
    b.launch_script = render_launch(
        name=b.recipe.name, tool=f"{TOOL['name']} {TOOL['version']}",
        files=files, sha256=sha, cmdline=b.cmdline,
        network=b.recipe.rootfs is not None and b.recipe.rootfs.network,
        shapes=[LaunchShape(m.shape, m.vcpus, m.vcpu_type, m.guest_features, m.measurement, m.id_block,
                            m.id_auth, m.author_key_digest is not None)
                for m in b.measurements],
        memory_mib=b.recipe.launch.memory_mib, policy=b.recipe.launch.policy)


def step_manifest(b: Build) -> None:
    assert b.initrd is not None  # step_initrd ran
    b.files = {
        b.firmware_file: (b.firmware_bytes, 0o644),
        KERNEL_FILE: (b.kernel_bytes, 0o644),
        INITRD_FILE: (b.initrd.data, 0o644),
        CMDLINE_FILE: (b.cmdline, 0o644),
        LAUNCH_FILE: (b.launch_script, 0o755),
    }
    roles = {b.firmware_file: "firmware", KERNEL_FILE: "kernel", INITRD_FILE: "initrd", CMDLINE_FILE: "cmdline",
             LAUNCH_FILE: "launch"}
    for name, (data, role) in b.id_files.items():
        b.files[name] = (data, 0o644)
        roles[name] = role
    outputs = [OutputRecord(name, roles[name], hashlib.sha256(data).hexdigest(), len(data))
               for name, (data, _) in b.files.items()]
    rootfs = None
    if b.rootfs is not None:
        for name, path, role in ((ROOTFS_FILE, b.rootfs.image, "rootfs"), (VERITY_FILE, b.rootfs.hashes,
                                                                            "rootfs-verity")):
            b.large_files[name] = path
            outputs.append(OutputRecord(name, role, sources.sha256_file(path, role), os.path.getsize(path)))
        rootfs = _rootfs_record(b)
    agent = None
    if b.agent is not None:
        a = b.recipe.agent
        assert a is not None  # step_agent ran for it
        # claims about the measured initrd: the agent in it listens on ``listen``, relays to ``app``
        agent = {"listen": a.listen, "app": a.app, "attester": a.attester,
                 "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256}
                              for p in b.agent.packages]}
    fw = b.firmware.describe()
    b.manifest = Manifest(
        name=b.recipe.name,
        tool={**TOOL, "initrd_compressor": b.initrd.compressor},
        recipe={"file": b.recipe.path.name, "sha256": b.recipe.sha256},
        lock={"file": b.recipe.lock_path.name, "sha256": b.lock.sha256},
        source_date_epoch=b.recipe.source_date_epoch,
        cmdline=b.cmdline.decode("utf-8"),
        kernel_hashes={"kernel": b.hashes.kernel.hex(), "initrd": b.hashes.initrd.hex(),
                       "cmdline": b.hashes.cmdline.hex()},
        firmware={"file": b.firmware_file, "ovmf_hash": b.ovmf_hash.hex(),
                  "sev_es_reset_eip": fw["sev_es_reset_eip"], "sev_hashes_table": fw["sev_hashes_table"],
                  "sev_metadata_sections": fw["sev_metadata_sections"]},
        launch=_launch_record(b),
        inputs=tuple(InputRecord(e.name, e.kind, e.version, e.sha256, e.size, e.origin) for e in b.lock.inputs),
        outputs=tuple(outputs),
        measurements=tuple(b.measurements),
        rootfs=rootfs, agent=agent,
        runtime_policy=None if b.recipe.runtime_policy is None else manifest_record(b.recipe.runtime_policy.policy))
    data = b.manifest.checked_json()
    b.files[MANIFEST] = (data, 0o644)
    b.files[PROVENANCE] = (provenance_json(b.manifest.to_dict(), data), 0o644)


def _rootfs_record(b: Build) -> dict:
    assert b.rootfs is not None and b.recipe.rootfs is not None
    r, p, app = b.rootfs, b.rootfs.verity.params, b.rootfs.tree.app
    return {
        "image": {"file": ROOTFS_FILE, "format": "erofs", "uuid": r.erofs_uuid, "tree_sha256": r.tree.tree_sha256},
        "verity": {"file": VERITY_FILE, "table": r.table, "hash_type": verity.HASH_TYPE, "algorithm": p.algorithm,
                   "data_block_size": p.data_block_size, "hash_block_size": p.hash_block_size,
                   "data_blocks": r.verity.data_blocks, "hash_start_block": r.verity.hash_start_block,
                   "salt": p.salt.hex(), "uuid": str(p.uuid), "root_hash": r.verity.root_hash.hex(),
                   "on_corruption": b.recipe.rootfs.on_corruption},
        "app": {"argv": list(app.argv), "env": [f"{k}={v}" for k, v in app.env], "workdir": app.workdir,
                "uid": app.uid, "gid": app.gid},
        "network": b.recipe.rootfs.network,
        "sources": [{"kind": s.kind, "name": s.name, "version": s.version, "sha256": s.sha256, "size": s.size}
                    for s in r.tree.sources],
    }


def _launch_record(b: Build) -> dict:
    out = {"memory_mib": b.recipe.launch.memory_mib, "policy": f"{b.recipe.launch.policy:#x}",
           "kernel_release": b.kernel.release}
    spec = b.recipe.id_block
    if spec is not None:
        # what verify-report's --family-id, --image-id and --min-guest-svn compare
        out["id_block"] = {"family_id": spec.family_id.hex(), "image_id": spec.image_id.hex(),
                           "guest_svn": spec.guest_svn, "policy": f"{spec.policy:#x}",
                           "author_key": spec.author_key is not None}
    return out


def step_write(b: Build) -> None:
    files: dict[str, tuple[bytes | Path, int]] = dict(b.files)
    files.update({name: (path, 0o644) for name, path in b.large_files.items()})
    write_bundle(b.out, files)


Step = tuple[str, Callable[[Build], None]]

STEPS: tuple[Step, ...] = (
    ("recipe", step_recipe),
    ("current", step_current),
    ("fetch", step_fetch),
    ("firmware", step_firmware),
    ("kernel", step_kernel),
    ("rootfs", step_rootfs),
    ("agent", step_agent),
    ("initrd", step_initrd),
    ("cmdline", step_cmdline),
    ("measure", step_measure),
    ("idblock", step_idblock),
    ("launch", step_launch),
    ("manifest", step_manifest),
    ("write", step_write),
)


def build(request: BuildRequest, *, steps: tuple[Step, ...] = STEPS, archive=None) -> BuildResult:
    """Run ``steps`` for ``request``; :meth:`builder.progress.Progress.step` of the current progress
    receiver is called before each.

    ``archive`` replaces the Debian archive (tests pass an in-memory one).
    """
    b = Build(request)
    report = current_progress()      # the command line's renderer, or one that ignores everything
    b.cache = sources.ContentCache(request.cache_root)
    b.archive = archive if archive is not None else sources.DebianArchive(
        cache=b.cache, offline=request.offline, allow_stale=request.allow_stale)
    with b.cache.tempdir("build") as work:
        b.work = Path(work)
        for name, fn in steps:
            if b.current:
                break
            report.step(name)
            t0 = time.perf_counter()
            fn(b)
            b.timings.append((name, time.perf_counter() - t0))
    return BuildResult(
        out=b.out, manifest=b.manifest, up_to_date=b.current, timings=tuple(b.timings),
        preflight=tuple(b.preflight.lines()) if b.preflight is not None else (),
        downloaded=tuple(str(p) for p in getattr(b.archive, "fetched", ())),
        initrd_listing=b.initrd.listing if b.initrd is not None else ())
