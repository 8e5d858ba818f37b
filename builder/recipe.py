"""Recipes: a YAML file -> a frozen :class:`Recipe`, or a :class:`RecipeError` naming file:line and key.

The YAML is composed into nodes (not loaded into plain dicts) so that every value keeps the
line it came from.  Every mapping is checked against the keys it may hold: an unknown key, a
missing one, a duplicate or a value of the wrong type stops the load with a sentence that
names ``file:line``, the dotted key and what to write instead.  The schema is documented in
docs/recipes.md; keep the two in step.

Inputs (firmware, kernel, busybox, files, binaries) are *declared* here and *pinned* by the
lock file (builder/lock.py); a declaration is kept as canonical data (:meth:`InputSpec.wants`)
so the lock can tell when the recipe asks for something other than what it pinned.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import builtins
import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from builder.errors import RecipeError
from builder.limits import MAX_RECIPE_BYTES, MAX_RECIPE_DEPTH
from builder.sources import SUITES as FETCHER_SUITES
from measure.cpu import CPU_SIGS
from measure.inputs import is_fifo_or_socket, read_bounded
from measure.runtime_policy import CMDLINE_PARAM as RUNTIME_POLICY_PARAM
from measure.runtime_policy import RuntimePolicy, RuntimePolicyError, parse_runtime_policy
from measure.spec import guest_policy_problem
from measure.vmm import PROFILES, VmmType

SCHEMA = 1
#: x86 ``COMMAND_LINE_SIZE``: a longer command line is cut by the kernel, so the guest
#: would run with something other than what was measured.
MAX_CMDLINE = 2047
#: The Debian suites a recipe may name: exactly those the fetcher resolves.
SUITES = tuple(FETCHER_SUITES)
COMPRESSIONS = ("gzip", "xz", "none")
#: the compressions a recipe may ask for: xz's stream would come from the host's liblzma
RECIPE_COMPRESSIONS = ("gzip", "none")
#: SEV features a QEMU launch can ask for: SNPActive, and DebugSwap (QEMU >= 10.2, debug-swap=on).
SNP_ACTIVE = 0x1
DEBUG_SWAP = 0x20
QEMU_GUEST_FEATURES = SNP_ACTIVE | DEBUG_SWAP
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PKG = re.compile(r"[a-z0-9][a-z0-9.+-]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODULE = re.compile(r"[A-Za-z0-9_-]+")
_CONFIG = re.compile(r"CONFIG_[A-Z0-9_]+")


# --------------------------------------------------------------------------------------
# the recipe, as frozen data
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """One input as the recipe declares it: a Debian package, a local file or an https URL.

    ``name`` is the input's name in the lock file and the manifest (``firmware``,
    ``kernel``, ``busybox``, ``init``, ``file:/etc/motd``, ``binary:/usr/bin/x``).
    """

    name: str
    kind: str                        # "debian" | "file" | "url"
    line: int
    package: str | None = None       # debian
    suite: str | None = None         # debian
    arch: str = "amd64"              # debian
    member: str | None = None        # debian: the path inside the package, if one file is used
    file: str | None = None          # file: path relative to the recipe's directory, as written
    url: str | None = None           # url
    sha256: str | None = None        # an optional pin (required for url)

    def wants(self) -> dict:
        """The declaration as canonical data: what the lock entry must have been made for."""
        if self.kind == "debian":
            return {"debian": self.package, "suite": self.suite, "arch": self.arch}
        if self.kind == "file":
            out = {"file": self.file}
        else:
            out = {"url": self.url}
        if self.sha256:
            out["sha256"] = self.sha256
        return out

    def describe(self) -> str:
        if self.kind == "debian":
            return f"Debian package {self.package} from {self.suite} ({self.arch})"
        if self.kind == "file":
            return f"local file {self.file}"
        return f"URL {self.url}"


#: the input every gzip initrd needs beyond what the recipe declares: the Debian package whose zlib
#: compresses it (builder.steps.deflate), pinned in the lock like any other package so that the
#: initrd's bytes do not depend on the zlib of the building host
COMPRESSOR = InputSpec(name="compressor", kind="debian", line=0, package="zlib1g", suite="bookworm", arch="amd64")


@dataclass(frozen=True)
class FileEntry:
    """A file placed in the initrd: inline ``content`` or an input (local file, URL, package member)."""

    path: str                        # absolute path inside the initrd
    mode: int
    line: int
    content: bytes | None = None
    source: InputSpec | None = None


@dataclass(frozen=True)
class BinaryEntry:
    """An ELF binary from a Debian package; its shared libraries come along."""

    path: str                        # path inside the package
    dest: str                        # path inside the initrd
    source: InputSpec
    line: int


@dataclass(frozen=True)
class KernelSpec:
    source: InputSpec
    #: options the recipe needs beyond what every guest needs (builder.steps.kernel.REQUIRED)
    require_config: tuple[str, ...] = ()


@dataclass(frozen=True)
class InitrdSpec:
    busybox: InputSpec
    #: the /init script; None: the project's default init (builder.steps.init), which
    #: loads ``modules``, reports sev-guest and the command line hash, then runs ``app_command``
    init: FileEntry | None = None
    app_command: str | None = None
    modules: tuple[str, ...] = ()
    files: tuple[FileEntry, ...] = ()
    binaries: tuple[BinaryEntry, ...] = ()
    compression: str = "gzip"


@dataclass(frozen=True)
class Shape:
    """One VM shape the manifest publishes a launch digest for."""

    vmm_profile: str
    vcpus: int
    vcpu_type: str
    guest_features: int

    @property
    def vcpu_sig(self) -> int:
        return CPU_SIGS[self.vcpu_type]

    @property
    def id(self) -> str:
        return f"{self.vmm_profile}:{self.vcpu_type}:{self.vcpus}:{self.guest_features:#x}"


@dataclass(frozen=True)
class ShapeSet:
    vmm_profile: str
    vcpus: tuple[int, ...]
    vcpu_types: tuple[str, ...]
    guest_features: tuple[int, ...]
    line: int


@dataclass(frozen=True)
class LaunchSpec:
    memory_mib: int = 2048
    policy: int = 0x30000


@dataclass(frozen=True)
class IdBlockSpec:
    """The ID block the bundle carries for every shape (SNP_LAUNCH_FINISH), and the keys that sign it.

    The keys are local-file inputs (``id_key``, ``author_key``): the lock pins their sha256
    like any other input; the bundle and manifest carry only what a report shows of them
    (the SHA-384 key digests), never the keys.
    """

    id_key: InputSpec                # a P-384 private key (PEM or DER), relative to the recipe
    author_key: InputSpec | None
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    guest_svn: int = 0
    policy: int = 0x30000            # always equal to the launch policy (checked when parsed)
    line: int = 0

    def keys(self) -> tuple[InputSpec, ...]:
        return (self.id_key,) if self.author_key is None else (self.id_key, self.author_key)


#: what the guest does when dm-verity finds a corrupted block of the application's root
ON_CORRUPTION = ("eio", "restart", "panic")
#: where the initrd carries the dmsetup tool that creates the verified root's device
DMSETUP_DEST = "/sbin/dmsetup"
#: directories the init mounts over (proc, sysfs, devtmpfs, tmpfs): the root provides them empty
ROOTFS_MOUNT_POINTS = ("/proc", "/sys", "/dev", "/tmp", "/run")
#: the PATH an application gets when neither the image nor the recipe sets one
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RootfsSpec:
    """The application's root filesystem (``rootfs:``): one source, extra files, start settings.

    ``source`` is ``"oci"`` (``path``, optional ``ref``), ``"directory"`` or ``"tarball"``
    (``path``), or ``"debian"`` (``packages``, ``suite``, ``arch``).  ``path`` is relative to
    the recipe's directory, as written.  ``entrypoint``/``cmd`` are None when the recipe does
    not override them (an empty tuple clears them); ``env`` is merged over the image's by name.
    ``dmsetup`` is the initrd binary that creates the verified device (also in
    ``Recipe.initrd.binaries``).
    """

    source: str                                   # "oci" | "directory" | "tarball" | "debian"
    line: int
    path: str | None = None                       # oci, directory, tarball
    ref: str | None = None                        # oci: org.opencontainers.image.ref.name
    packages: tuple[str, ...] = ()                # debian, as listed
    suite: str | None = None                      # debian
    arch: str = "amd64"                           # debian
    files: tuple[FileEntry, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    user: str | None = None
    user_line: int | None = None                  # the line of ``user:``, for messages
    network: bool = False
    on_corruption: str = "eio"
    dmsetup: BinaryEntry | None = None

    def wants(self) -> dict:
        """The source as canonical data: what the lock's ``rootfs`` pins must have been made for."""
        if self.source == "oci":
            return {"oci": self.path, "ref": self.ref}
        if self.source == "debian":
            return {"rootfs_packages": sorted(self.packages), "suite": self.suite, "arch": self.arch}
        return {self.source: self.path}

    def describe(self) -> str:
        if self.source == "oci":
            return f"OCI image {self.path}" + (f" (tag {self.ref})" if self.ref else "")
        if self.source == "debian":
            return f"Debian packages {', '.join(self.packages)} from {self.suite} ({self.arch})"
        return f"{self.source} {self.path}"


#: the attestation agent's report sources: ``hardware`` (the guest's SEV-SNP device, found at run
#: time) and ``simulated`` (the test-only attester outside the guest, through QEMU's guestfwd)
AGENT_ATTESTERS = ("hardware", "simulated")
#: the Debian packages of the agent's runtime (pinned with their closure as ``agent:<name>``)
AGENT_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "openssl")
#: where the guest reaches the simulated attester (QEMU user networking's guestfwd address)
SIMULATED_ATTESTER = "10.0.2.100:4050"
#: the kernel parameter the build adds for a simulated attester, so that a simulation image's
#: measured command line (and launch digest) can never be a production image's
ATTESTER_PARAM = "blindbox.attester"


@dataclass(frozen=True)
class AgentSpec:
    """The attestation agent (``agent:``): TLS on ``listen``, relayed to the application on loopback ``app``.

    ``attester`` is ``hardware`` (the agent's ``--attester auto``) or ``simulated``
    (``simulated:`` + :data:`SIMULATED_ATTESTER`, and the measured command line says so);
    ``suite``: the Debian suite of the agent's runtime packages (:data:`AGENT_PACKAGES`).
    """

    line: int
    listen: int = 8443
    app: int = 8080
    attester: str = "hardware"
    suite: str = "bookworm"
    arch: str = "amd64"

    @property
    def packages(self) -> tuple[str, ...]:
        return AGENT_PACKAGES

    def wants(self) -> dict:
        """The declaration the ``agent:<package>`` pins are made for."""
        return {"agent_packages": sorted(AGENT_PACKAGES), "suite": self.suite, "arch": self.arch}

    @property
    def attester_argument(self) -> str:
        """The agent's ``--attester`` value."""
        return "auto" if self.attester == "hardware" else f"simulated:{SIMULATED_ATTESTER}"

    @property
    def cmdline_parameter(self) -> str | None:
        """What the build appends to the measured command line (only for a simulated attester)."""
        return None if self.attester == "hardware" else f"{ATTESTER_PARAM}={self.attester_argument}"


@dataclass(frozen=True)
class RuntimePolicySpec:
    """The recipe's ``runtime_policy:`` (docs/runtime-policy.md), validated, and the line it starts on;
    ``nft`` is the initrd binary that loads its rule set (also in ``Recipe.initrd.binaries``)."""

    policy: RuntimePolicy
    line: int
    nft: BinaryEntry | None = None


#: where the initrd carries Debian's nft (package nftables), which loads the runtime policy's rule set
NFT_DEST = "/usr/sbin/nft"


#: SNP GUEST_POLICY bit 19: the hypervisor may debug the guest (read and change its memory)
GUEST_POLICY_DEBUG = 1 << 19
#: kernel parameters that debug the guest or give a shell instead of the measured init; a recipe
#: whose runtime policy has ``debug: false`` may not have them on its command line (``x.dyndbg`` too)
KERNEL_DEBUG_PARAMS = ("debug", "kgdboc", "kgdbwait", "kgdbcon", "kgdbdbgp", "kgdb", "ekgdboc", "init", "rdinit",
                       "sysrq_always_enabled", "ftrace", "ftrace_dump_on_oops", "ftrace_filter", "trace_event",
                       "trace_options", "tp_printk", "dyndbg", "ignore_loglevel", "earlyprintk", "kmemleak",
                       "slub_debug")


@dataclass(frozen=True)
class Recipe:
    path: Path
    sha256: str                      # of the recipe file's bytes
    name: str
    source_date_epoch: int
    firmware: InputSpec
    kernel: KernelSpec
    initrd: InitrdSpec
    cmdline: str
    shape_sets: tuple[ShapeSet, ...]
    launch: LaunchSpec = field(default_factory=LaunchSpec)
    id_block: IdBlockSpec | None = None
    rootfs: RootfsSpec | None = None
    agent: AgentSpec | None = None
    runtime_policy: RuntimePolicySpec | None = None

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    @property
    def cmdline_bytes(self) -> bytes:
        """The command line exactly as passed to ``-append`` (QEMU hashes it plus one NUL)."""
        return self.cmdline.encode("utf-8")

    def inputs(self) -> tuple[InputSpec, ...]:
        """Every declared input, each once, in a fixed order."""
        out = [self.firmware, self.kernel.source, self.initrd.busybox]
        if self.initrd.init is not None and self.initrd.init.source is not None:
            out.append(self.initrd.init.source)
        out += [f.source for f in self.initrd.files if f.source is not None]
        out += [b.source for b in self.initrd.binaries]
        if self.rootfs is not None:
            out += [f.source for f in self.rootfs.files if f.source is not None]
        if self.initrd.compression == "gzip":
            out.append(COMPRESSOR)      # not declared: every gzip initrd needs it
        if self.id_block is not None:
            out += self.id_block.keys()
        return tuple(out)

    def shapes(self) -> tuple[Shape, ...]:
        out: list[Shape] = []
        for s in self.shape_sets:
            for t in s.vcpu_types:
                for gf in s.guest_features:
                    for n in s.vcpus:
                        shape = Shape(s.vmm_profile, n, t, gf)
                        if shape not in out:
                            out.append(shape)
        return tuple(out)


# --------------------------------------------------------------------------------------
# reading YAML nodes with their lines
# --------------------------------------------------------------------------------------

_TYPE_NAMES = {"str": "a string", "int": "an integer", "bool": "true or false", "null": "nothing",
               "float": "a number", "seq": "a list", "map": "a mapping", "timestamp": "a date",
               "binary": "binary data", "set": "a set", "omap": "an ordered mapping"}


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "map"
    if isinstance(node, yaml.SequenceNode):
        return "seq"
    return node.tag.rsplit(":", 1)[-1]


class _Node:
    """A YAML node with the file, line and dotted key it was found at."""

    _constructor = SafeConstructor()

    def __init__(self, node: yaml.Node, path: Path, key: str, key_line: int | None = None):
        self.node = node
        self.path = path
        self.key = key
        self.line = node.start_mark.line + 1
        #: the line of the key that holds this value (where a missing sub-key is reported)
        self.key_line = self.line if key_line is None else key_line

    def error(self, message: str, key: str | None = None, line: int | None = None) -> RecipeError:
        key = self.key if key is None else key
        line = self.line if line is None else line
        return RecipeError(f"{self.path}:{line}: {key}: {message}", path=str(self.path), line=line, key=key)

    @property
    def kind(self) -> str:
        return _kind(self.node)

    def _expect(self, *kinds: str) -> None:
        if self.kind not in kinds:
            want = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
            got = _TYPE_NAMES.get(self.kind, self.kind)
            shown = ""
            if isinstance(self.node, yaml.ScalarNode) and self.node.value != "":
                shown = f" ({self.node.value!r})"
            raise self.error(f"expected {want}, got {got}{shown}.")

    def scalar(self) -> Any:
        try:
            return self._constructor.construct_object(self.node, deep=True)
        except (ConstructorError, ValueError) as e:
            raise self.error(f"cannot read this value ({e}).") from None

    def str(self, *, nonempty: bool = True) -> str:
        self._expect("str")
        value = self.scalar()
        if nonempty and not value.strip():
            raise self.error("must not be empty.")
        return value

    def int(self, *, lo: int | None = None, hi: int | None = None, hex_str: bool = False) -> int:
        if hex_str and self.kind == "str":
            text = self.scalar()
            try:
                value = int(text, 0)
            except ValueError:
                raise self.error(f"{text!r} is not an integer (write 0x1 or 1).") from None
        else:
            self._expect("int")
            value = self.scalar()
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{lo if lo is not None else '-inf'} to {hi if hi is not None else 'inf'}"
            raise self.error(f"{value} is out of range ({bounds}).")
        return value

    def bool(self) -> bool:
        self._expect("bool")
        return self.scalar()

    def list(self, *, nonempty: builtins.bool = False) -> list["_Node"]:
        self._expect("seq")
        items = [_Node(n, self.path, f"{self.key}[{i}]") for i, n in enumerate(self.node.value)]
        if nonempty and not items:
            raise self.error("must list at least one item.")
        return items

    def mapping(self, allowed: dict[builtins.str, builtins.str],
                required: tuple[builtins.str, ...] = ()) -> dict[builtins.str, "_Node"]:
        """The mapping's entries; ``allowed`` maps each key to a short description for errors."""
        self._expect("map")
        out: dict[str, _Node] = {}
        for knode, vnode in self.node.value:
            kline = knode.start_mark.line + 1
            if _kind(knode) != "str":
                raise self.error(f"keys must be names, got {knode.value!r}.", line=kline)
            name = knode.value
            full = f"{self.key}.{name}" if self.key else name
            if name in RESERVED.get(self.key, {}):
                raise self.error(RESERVED[self.key][name], key=full, line=kline)
            if name not in allowed:
                close = [k for k in allowed if k.replace("_", "") == name.replace("_", "").replace("-", "")]
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise self.error(f"unknown key {name!r}.{hint} Allowed here: {', '.join(sorted(allowed))}.",
                                 key=full, line=kline)
            if name in out:
                raise self.error(f"{name!r} is given twice (first at line {out[name].line}).",
                                 key=full, line=kline)
            out[name] = _Node(vnode, self.path, full, key_line=kline)
        for name in required:
            if name not in out:
                full = f"{self.key}.{name}" if self.key else name
                raise self.error(f"missing required key {name!r} ({allowed[name]}).", key=full,
                                 line=self.key_line)
        return out


#: keys kept for later features: refused with a reason rather than ignored (dotted parent -> key -> why).
RESERVED: dict[str, dict[str, str]] = {}


# --------------------------------------------------------------------------------------
# the schema
# --------------------------------------------------------------------------------------

_SOURCE_KEYS = {
    "debian": "a Debian package name",
    "suite": f"the Debian suite: {', '.join(FETCHER_SUITES)}",
    "arch": "the Debian architecture (amd64)",
    "file": "a local file, relative to the recipe",
    "url": "an https URL",
    "sha256": "the expected SHA-256 of the file (64 hex digits)",
}


def _posix_abs(node: _Node) -> str:
    text = node.str()
    p = PurePosixPath(text)
    if not p.is_absolute() or ".." in p.parts or str(p) != text:
        raise node.error(f"{text!r} must be a normalized absolute path such as /usr/bin/app.")
    return text


def _source(n: _Node, fields: dict[str, _Node], name: str, *, member_key: str | None = None,
            member_required: bool = False, member_default: str | None = None) -> InputSpec:
    kinds = [k for k in ("debian", "file", "url") if k in fields]
    if len(kinds) != 1:
        what = "none" if not kinds else " and ".join(kinds)
        raise n.error(f"give exactly one of 'debian', 'file' or 'url' (got {what}).")
    kind = kinds[0]
    sha = None
    if "sha256" in fields:
        sha = fields["sha256"].str().lower()
        if not _SHA256.fullmatch(sha):
            raise fields["sha256"].error("must be 64 hexadecimal digits.")
    if kind == "debian":
        for bad in ("sha256",):
            if bad in fields:
                raise fields[bad].error("Debian packages are pinned by the lock file; remove sha256 "
                                        "here and run `blindbox lock`.")
        pkg = fields["debian"].str()
        if not _PKG.fullmatch(pkg):
            raise fields["debian"].error(f"{pkg!r} is not a Debian package name.")
        if "suite" not in fields:
            raise n.error(f"missing required key 'suite' for Debian package {pkg} "
                          f"(one of {', '.join(SUITES)}).", key=f"{n.key}.suite", line=n.key_line)
        suite = fields["suite"].str()
        if suite not in SUITES:
            raise fields["suite"].error(f"unknown suite {suite!r}; use one of {', '.join(SUITES)} (codenames, "
                                        f"as blindbox fetches them: sid, not unstable).")
        arch = fields["arch"].str() if "arch" in fields else "amd64"
        if arch != "amd64":
            raise fields["arch"].error("only amd64 guests are built (SEV-SNP is x86-64).")
        member = None
        if member_key and member_key in fields:
            member = _posix_abs(fields[member_key])
        elif member_required:
            raise n.error(f"missing required key {member_key!r}: the file to take from package {pkg}.",
                          key=f"{n.key}.{member_key}", line=n.key_line)
        else:
            member = member_default
        return InputSpec(name, "debian", n.line, package=pkg, suite=suite, arch=arch, member=member)
    for bad in ("suite", "arch"):
        if bad in fields:
            raise fields[bad].error(f"{bad!r} only applies to Debian packages.")
    if member_key and member_key in fields and member_key != "path":
        raise fields[member_key].error(f"{member_key!r} only applies to Debian packages.")
    if kind == "file":
        text = fields["file"].str()
        if PurePosixPath(text).is_absolute() or ".." in PurePosixPath(text).parts:
            raise fields["file"].error(f"{text!r} must be relative to the recipe's directory, "
                                       f"without '..', so the recipe can be moved with its files.")
        return InputSpec(name, "file", n.line, file=text, sha256=sha)
    url = fields["url"].str()
    if not url.startswith("https://"):
        raise fields["url"].error(f"{url!r}: only https URLs are fetched.")
    if sha is None:
        raise n.error("a URL input needs its sha256: the bytes behind a URL can change.",
                      key=f"{n.key}.sha256", line=n.key_line)
    return InputSpec(name, "url", n.line, url=url, sha256=sha)


def _mode(node: _Node) -> int:
    if node.kind != "str":
        raise node.error("write file modes as quoted octal strings, e.g. \"0755\" (a bare 0755 or 755 "
                         "is read as a number by YAML).")
    text = node.str()
    if not re.fullmatch(r"0?[0-7]{3,4}", text):
        raise node.error(f"{text!r} is not an octal file mode such as \"0644\" or \"0755\".")
    value = int(text, 8)
    if value & ~0o7777:
        raise node.error(f"{text!r} has bits beyond 07777.")
    return value


def _file_entry(n: _Node, *, dest_required: bool, name_prefix: str, default_mode: int) -> FileEntry:
    allowed = {"path": "where the file goes in the initrd", "content": "the file's text, inline",
               "mode": "the file mode as a quoted octal string", "member": "the path inside a Debian package",
               **_SOURCE_KEYS}
    if not dest_required:
        allowed.pop("path")
    fields = n.mapping(allowed, required=("path",) if dest_required else ())
    dest = _posix_abs(fields["path"]) if dest_required else "/init"
    mode = _mode(fields["mode"]) if "mode" in fields else default_mode
    name = f"{name_prefix}{dest}" if dest_required else name_prefix
    has_source = any(k in fields for k in ("debian", "file", "url"))
    if "content" in fields:
        if has_source or "member" in fields or "sha256" in fields:
            raise fields["content"].error("give either inline 'content' or a source (debian, file, url), "
                                          "not both.")
        text = fields["content"].str(nonempty=False)
        return FileEntry(dest, mode, n.line, content=text.encode("utf-8"))
    if not has_source:
        raise n.error("give the file's 'content' inline, or a source: 'file' (relative to the recipe), "
                      "'url' with 'sha256', or 'debian' with 'suite' and 'member'.")
    src = _source(n, fields, name, member_key="member",
                  member_required="debian" in fields)
    return FileEntry(dest, mode, n.line, source=src)


def _shape_set(n: _Node, fw_kind: str) -> ShapeSet:
    fields = n.mapping({
        "vmm_profile": f"the VMM profile ({', '.join(PROFILES)})",
        "vcpus": "a list of vCPU counts",
        "vcpu_types": f"a list of vCPU types ({', '.join(CPU_SIGS)})",
        "guest_features": "a list of SEV feature values (default [0x1])",
    }, required=("vmm_profile", "vcpus", "vcpu_types"))
    prof_node = fields["vmm_profile"]
    prof = prof_node.str().lower()
    if prof not in PROFILES:
        raise prof_node.error(f"unknown VMM profile {prof!r}; use one of {', '.join(PROFILES)}.")
    vmm = PROFILES[prof].vmm_type
    if vmm is not VmmType.QEMU:
        cloud = {"ec2": "Amazon EC2", "gce": "Google Compute Engine"}[vmm.value]
        raise prof_node.error(
            f"this recipe ships its own firmware ({fw_kind}), but {cloud} launches SNP guests with its "
            f"own firmware, so a {prof} digest computed over this bundle's OVMF would never appear in "
            f"a report. Publish QEMU shapes (vmm_profile: qemu) for this recipe.")
    counts = []
    for item in fields["vcpus"].list(nonempty=True):
        v = item.int(lo=1, hi=4096)
        if v in counts:
            raise item.error(f"vCPU count {v} is listed twice.")
        counts.append(v)
    types = []
    for item in fields["vcpu_types"].list(nonempty=True):
        t = item.str()
        exact = next((k for k in CPU_SIGS if k.lower() == t.lower()), None)
        if exact is None:
            raise item.error(f"unknown vCPU type {t!r}; use one of {', '.join(CPU_SIGS)}.")
        if exact in types:
            raise item.error(f"vCPU type {exact} is listed twice.")
        types.append(exact)
    features = []
    gf_items = fields["guest_features"].list(nonempty=True) if "guest_features" in fields else []
    for item in gf_items:
        v = item.int(lo=0, hi=(1 << 64) - 1, hex_str=True)
        if not v & SNP_ACTIVE:
            raise item.error(f"{v:#x} lacks SNPActive (bit 0); every SNP guest has it. Use 0x1.")
        if v & ~QEMU_GUEST_FEATURES:
            raise item.error(
                f"{v:#x} asks for SEV features that launch-snp.sh cannot request from QEMU; "
                f"QEMU launches give 0x1, or 0x21 with debug-swap=on (QEMU >= 10.2).")
        if v in features:
            raise item.error(f"guest features {v:#x} are listed twice.")
        features.append(v)
    return ShapeSet(prof, tuple(sorted(counts)), tuple(types), tuple(features) or (SNP_ACTIVE,), n.line)


def _cmdline(node: _Node) -> str:
    if node.kind != "str":
        raise node.error("the kernel command line must be a string; quote it (cmdline: \"console=ttyS0\").")
    text = node.scalar()
    for ch in text:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise node.error(
                f"contains the control character {ch!r}; the command line is measured byte for byte, "
                f"and a YAML block scalar (|) adds a trailing newline. Write it as one quoted line.")
    raw = text.encode("utf-8")
    if len(raw) > MAX_CMDLINE:
        raise node.error(f"is {len(raw)} bytes; the x86 kernel keeps at most {MAX_CMDLINE}, so the guest "
                         f"would run with less than was measured.")
    return text


_ID_KEY_NAMES = {"id_key": "ID key", "author_key": "author key"}


def _key_file(node: _Node, name: str) -> InputSpec:
    if node.kind != "str":
        raise node.error("write the key file's path relative to the recipe, e.g. keys/id.pem.")
    text = node.str()
    p = PurePosixPath(text)
    if p.is_absolute() or ".." in p.parts or str(p) != text:
        raise node.error(f"{text!r} must be a normalized path relative to the recipe's directory, without "
                         f"'..', so the recipe can be moved with its keys.")
    return InputSpec(name, "file", node.line, file=text)


def _id16(node: _Node) -> bytes:
    if node.kind == "int":
        raise node.error(f"write it as a quoted string of 32 hex digits (\"{'00' * 16}\"): YAML reads "
                         f"unquoted digits as a number.")
    text = node.str()
    if not re.fullmatch(r"[0-9A-Fa-f]{32}", text):
        raise node.error(f"{text!r} is not 16 bytes; write exactly 32 hex digits (the default is all zero).")
    return bytes.fromhex(text)


def _id_block(n: _Node, launch: LaunchSpec, launch_policy_line: int | None) -> IdBlockSpec:
    fields = n.mapping({
        "id_key": "the ID key: a P-384 private key file, relative to the recipe",
        "author_key": "the author key: a P-384 private key file, relative to the recipe (optional)",
        "family_id": "FAMILY_ID: 32 hex digits (default zero)",
        "image_id": "IMAGE_ID: 32 hex digits (default zero)",
        "guest_svn": "GUEST_SVN (default 0)",
        "policy": "the guest policy in the ID block; must equal launch.policy (the default)",
    }, required=("id_key",))
    id_key = _key_file(fields["id_key"], "id_key")
    author_key = _key_file(fields["author_key"], "author_key") if "author_key" in fields else None
    policy = launch.policy
    if "policy" in fields:
        policy = fields["policy"].int(lo=0, hi=(1 << 64) - 1, hex_str=True)
        if policy != launch.policy:
            where = f"launch.policy at line {launch_policy_line}" if launch_policy_line else \
                "the default, since launch.policy is not given"
            raise fields["policy"].error(
                f"{policy:#x} is not the launch policy {launch.policy:#x} ({where}), and the firmware refuses "
                f"to launch a guest whose ID block policy differs from its launch policy; write the same value "
                f"in both, or leave id_block.policy out to use launch.policy.")
    return IdBlockSpec(
        id_key=id_key, author_key=author_key,
        family_id=_id16(fields["family_id"]) if "family_id" in fields else bytes(16),
        image_id=_id16(fields["image_id"]) if "image_id" in fields else bytes(16),
        guest_svn=fields["guest_svn"].int(lo=0, hi=(1 << 32) - 1, hex_str=True) if "guest_svn" in fields else 0,
        policy=policy, line=n.line)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER = re.compile(r"[^:\s]+(:[^:\s]+)?")
_OCI_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}")


def _relative(node: _Node, what: str) -> str:
    text = node.str()
    p = PurePosixPath(text)
    if p.is_absolute() or ".." in p.parts or "\0" in text:
        raise node.error(f"{text!r} must be {what} relative to the recipe's directory, without '..', so the "
                         f"recipe can be moved with its files.")
    return text


def _argv(node: _Node) -> tuple[str, ...]:
    if node.kind != "seq":
        raise node.error("write a list of strings, e.g. [/usr/bin/python3, /srv/app.py] (there is no shell "
                         "form: to use a shell, write [/bin/sh, -c, \"...\"]).")
    out = []
    for item in node.list():
        if item.kind != "str":
            raise item.error("must be a string; quote it.")
        text = item.str(nonempty=False)
        if "\0" in text:
            raise item.error("contains a NUL byte, which no program argument can hold.")
        out.append(text)
    return tuple(out)


def _rootfs(n: _Node, kernel: InputSpec, seen: dict[str, int]) -> tuple[RootfsSpec, BinaryEntry]:
    """``rootfs:`` and the initrd binary (dmsetup) that sets up its dm-verity device."""
    fields = n.mapping({
        "oci": "an OCI image layout directory or image archive: {path: ..., ref: TAG}",
        "directory": "a directory, relative to the recipe",
        "tarball": "a tarball (uncompressed, gzip, xz, ...), relative to the recipe",
        "debian": "Debian packages: {suite: bookworm, packages: [...]}",
        "files": "extra files laid over the source",
        "entrypoint": "the program and its first arguments (overrides the image's Entrypoint)",
        "cmd": "arguments after the entrypoint (overrides the image's Cmd)",
        "env": "environment variables, merged over the image's by name",
        "workdir": "the working directory (overrides the image's WorkingDir)",
        "user": "the user to run as: name, uid, uid:gid, name:group, ...",
        "network": "true: the guest gets a virtio-net NIC configured by DHCP (default false)",
        "on_corruption": f"what dm-verity does on a corrupted block: {', '.join(ON_CORRUPTION)} (default eio)",
        "dmsetup": "the Debian package of the initrd's dmsetup (default: dmsetup from the kernel's suite)",
    })
    sources = [k for k in ("oci", "directory", "tarball", "debian") if k in fields]
    if len(sources) != 1:
        got = "none" if not sources else " and ".join(sources)
        raise n.error(f"give exactly one source of the root filesystem: 'oci', 'directory', 'tarball' or "
                      f"'debian' (got {got}).", line=n.key_line)
    source = sources[0]
    sn = fields[source]
    kw: dict[str, Any] = {}
    if source == "oci":
        if sn.kind == "str":
            raise sn.error("write the image as a mapping: oci: {path: image/, ref: TAG} (ref is optional).")
        of = sn.mapping({"path": "the OCI image layout directory, OCI archive or `docker save` archive, "
                                 "relative to the recipe",
                         "ref": "the image's tag in the layout (org.opencontainers.image.ref.name)"},
                        required=("path",))
        kw["path"] = _relative(of["path"], "a directory or archive")
        if "ref" in of:
            ref = of["ref"].str()
            if not _OCI_REF.fullmatch(ref):
                raise of["ref"].error(f"{ref!r} is not an image tag such as v1 or 1.0.2.")
            kw["ref"] = ref
    elif source in ("directory", "tarball"):
        kw["path"] = _relative(sn, "a directory" if source == "directory" else "a tarball")
    else:
        df = sn.mapping({"suite": _SOURCE_KEYS["suite"], "packages": "the Debian packages to install",
                         "arch": _SOURCE_KEYS["arch"]}, required=("suite", "packages"))
        suite = df["suite"].str()
        if suite not in SUITES:
            raise df["suite"].error(f"unknown suite {suite!r}; use one of {', '.join(SUITES)} (codenames, "
                                    f"as blindbox fetches them: sid, not unstable).")
        arch = df["arch"].str() if "arch" in df else "amd64"
        if arch != "amd64":
            raise df["arch"].error("only amd64 guests are built (SEV-SNP is x86-64).")
        packages: list[str] = []
        for item in df["packages"].list(nonempty=True):
            pkg = item.str()
            if not _PKG.fullmatch(pkg):
                raise item.error(f"{pkg!r} is not a Debian package name.")
            if pkg in packages:
                raise item.error(f"package {pkg} is listed twice.")
            packages.append(pkg)
        kw.update(packages=tuple(packages), suite=suite, arch=arch)

    files: list[FileEntry] = []
    if "files" in fields:
        placed: dict[str, int] = {}
        for item in fields["files"].list():
            f = _file_entry(item, dest_required=True, name_prefix="rootfs_file:", default_mode=0o644)
            if f.path in placed:
                raise item.error(f"{f.path} is already placed in the root filesystem (line {placed[f.path]}).")
            if f.mode & ~0o777:
                raise item.error(f"mode {f.mode:#o} has setuid, setgid or sticky bits, which the root filesystem "
                                 f"never keeps (nothing in it gains privileges through a file mode); write a mode "
                                 f"such as \"0755\".")
            hidden = next((m for m in ROOTFS_MOUNT_POINTS if f.path == m or f.path.startswith(m + "/")), None)
            if hidden is not None:
                raise item.error(f"{f.path} would be hidden: the init mounts a file system over {hidden} before "
                                 f"the application starts; place the file elsewhere.")
            placed[f.path] = item.line
            files.append(f)
    kw["files"] = tuple(files)
    for key in ("entrypoint", "cmd"):
        if key in fields:
            kw[key] = _argv(fields[key])
    if "env" in fields:
        kw["env"] = tuple(_env_items(fields["env"]))
    if "workdir" in fields:
        kw["workdir"] = _posix_abs(fields["workdir"])
    if "user" in fields:
        un = fields["user"]
        if un.kind == "int":
            raise un.error("quote the user (user: \"1000\" or \"1000:1000\"): YAML reads bare digits as a "
                           "number, and 1000:1000 as a base-60 number.")
        user = un.str(nonempty=False)
        if user and not _USER.fullmatch(user):
            raise un.error(f"{user!r} is not a user: write a name or uid, optionally with ':' and a group name "
                           f"or gid (\"app\", \"1000\", \"1000:1000\", \"app:app\").")
        kw["user"] = user
        kw["user_line"] = un.line
    if "network" in fields:
        kw["network"] = fields["network"].bool()
    if "on_corruption" in fields:
        oc = fields["on_corruption"].str()
        if oc == "ignore":
            raise fields["on_corruption"].error(
                "'ignore' (dm-verity's ignore_corruption) lets the guest read blocks that fail verification, "
                "so the application could run bytes that are not the measured ones; use eio (the read fails), "
                "restart or panic.")
        if oc not in ON_CORRUPTION:
            raise fields["on_corruption"].error(f"unknown value {oc!r}; use one of {', '.join(ON_CORRUPTION)}.")
        kw["on_corruption"] = oc

    name = f"binary:{DMSETUP_DEST}"
    if DMSETUP_DEST in seen:
        raise n.error(f"the initrd already places {DMSETUP_DEST} (line {seen[DMSETUP_DEST]}), but with rootfs "
                      f"the initrd carries dmsetup from rootfs.dmsetup; remove it from the initrd (name another "
                      f"package in rootfs.dmsetup if needed).", key="rootfs", line=n.key_line)
    if "dmsetup" in fields:
        dn = fields["dmsetup"]
        dfields = dn.mapping({"debian": _SOURCE_KEYS["debian"], "suite": _SOURCE_KEYS["suite"],
                              "arch": _SOURCE_KEYS["arch"],
                              "path": "dmsetup inside the package (default /sbin/dmsetup in bookworm, "
                                      "/usr/sbin/dmsetup later)"}, required=("debian", "suite"))
        src = _source(dn, dfields, name, member_key="path", member_default="")
        line = dn.line
    else:
        assert kernel.suite is not None  # the kernel comes from a Debian package
        src = InputSpec(name, "debian", n.key_line, package="dmsetup", suite=kernel.suite, arch=kernel.arch)
        line = n.key_line
    if not src.member:
        member = "/sbin/dmsetup" if src.suite == "bookworm" else "/usr/sbin/dmsetup"
        src = InputSpec(name, "debian", src.line, package=src.package, suite=src.suite, arch=src.arch,
                        member=member)
    assert src.member is not None
    dmsetup = BinaryEntry(src.member, DMSETUP_DEST, src, line)
    return RootfsSpec(source=source, line=n.key_line, dmsetup=dmsetup, **kw), dmsetup


def _env_items(node: _Node) -> list[tuple[str, str]]:
    node._expect("map")
    out: list[tuple[str, str]] = []
    for knode, vnode in node.node.value:
        kline = knode.start_mark.line + 1
        name = knode.value if _kind(knode) == "str" else None
        if name is None or not _ENV_NAME.fullmatch(name):
            raise node.error(f"{knode.value!r} is not an environment variable name (letters, digits and '_', "
                             f"not starting with a digit).", line=kline)
        full = f"{node.key}.{name}"
        if any(n == name for n, _ in out):
            raise node.error(f"{name!r} is given twice.", key=full, line=kline)
        v = _Node(vnode, node.path, full, key_line=kline)
        if v.kind != "str":
            raise v.error("environment values are strings; quote it (e.g. \"1\").")
        value = v.str(nonempty=False)
        if "\0" in value:
            raise v.error("contains a NUL byte, which no environment variable can hold.")
        out.append((name, value))
    return out


def local_path(recipe: Recipe, spec: InputSpec, key: str | None = None) -> Path:
    """The local file ``spec`` names, relative to the recipe's directory.

    Refused (RecipeError at the declaration's ``file:line``) when the file, or a directory
    on its way, is a symbolic link that resolves outside the recipe's directory: local
    inputs stay inside it, so nothing from elsewhere on the host lands in the guest.
    """
    assert spec.file is not None  # a local file input
    return _inside_recipe_dir(recipe, spec.file, spec.line, key or spec.name)


def _inside_recipe_dir(recipe: Recipe, rel: str, line: int, key: str) -> Path:
    path = recipe.directory / rel
    base = os.path.realpath(recipe.directory)
    real = os.path.realpath(path)
    if os.path.commonpath([base, real]) != base:
        raise RecipeError(
            f"{recipe.path}:{line}: {key}: {rel!r} is a symbolic link (or lies under one) that "
            f"resolves to {real}, outside the recipe's directory {base}; local files must stay inside the "
            f"recipe's directory, so copy the file there instead of linking to it.",
            path=str(recipe.path), line=line, key=key)
    return path


def rootfs_path(recipe: Recipe) -> Path:
    """The local OCI image, directory or tarball ``rootfs:`` names, inside the recipe's directory.

    Refused like :func:`local_path` when it resolves (through a symbolic link) outside it.
    """
    spec = recipe.rootfs
    assert spec is not None and spec.path is not None  # a local rootfs source
    return _inside_recipe_dir(recipe, spec.path, spec.line, f"rootfs.{spec.source}")


def load_id_key(recipe: Recipe, spec: InputSpec, path: str | Path | None = None):
    """The P-384 private key an ``id_block`` key input names (read from ``path`` if given).

    Raises RecipeError at the key's ``file:line`` when the file is unreadable, not an
    unencrypted private key, or not on P-384.
    """
    from measure.errors import InputError
    from blindbox.audit.idblock import load_private_key

    what = _ID_KEY_NAMES[spec.name]
    key = f"id_block.{spec.name}"
    assert spec.file is not None  # id_block keys are file inputs
    try:
        return load_private_key(local_path(recipe, spec, key) if path is None else Path(path), what)
    except InputError as e:
        raise RecipeError(f"{recipe.path}:{spec.line}: {key}: {e}", path=str(recipe.path), line=spec.line,
                          key=key) from None


def check_id_keys(recipe: Recipe) -> None:
    """Refuse (RecipeError, file:line) an ``id_block`` key that cannot sign an SEV-SNP ID block."""
    if recipe.id_block is not None:
        for spec in recipe.id_block.keys():
            load_id_key(recipe, spec)


def _check_depth(text: str, path: Path) -> list[yaml.Event]:
    """Refuse collections nested deeper than MAX_RECIPE_DEPTH before composing them; the parser's events.

    PyYAML's parser is iterative but its composer recurses once per level, so ``[[[[...``
    would end in a RecursionError; the event stream finds the depth without recursing.
    """
    depth = 0
    events = []
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        events.append(event)
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_RECIPE_DEPTH:
                assert event.start_mark is not None  # the parser marks every event
                line = event.start_mark.line + 1
                raise RecipeError(f"{path}:{line}: the recipe nests collections more than {MAX_RECIPE_DEPTH} "
                                  f"levels deep; a recipe needs four (docs/limits.md).", path=str(path),
                                  line=line, key="")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return events


class _EventComposer(yaml.composer.Composer, yaml.resolver.Resolver):
    """SafeLoader's composer and resolver, fed with the events :func:`_check_depth` parsed, so that the
    recipe is scanned and parsed once (the nodes, and the errors they raise, are the same)."""

    def __init__(self, events: list[yaml.Event]):
        yaml.composer.Composer.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._events = events
        self._next = 0

    def check_event(self, *choices: type) -> bool:
        if self._next >= len(self._events):
            return False
        return not choices or isinstance(self._events[self._next], choices)

    def peek_event(self) -> yaml.Event | None:
        return self._events[self._next] if self._next < len(self._events) else None

    def get_event(self) -> yaml.Event | None:
        event = self.peek_event()
        self._next += 1
        return event

    def documents(self) -> list[yaml.Node | None]:
        docs = []
        while self.check_node():
            docs.append(self.get_node())
        return docs


def parse_recipe(data: bytes, path: str | Path) -> Recipe:
    """Parse recipe bytes; ``path`` locates relative files and names the file in errors."""
    path = Path(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise RecipeError(f"{path}:{line}: the recipe is not UTF-8: byte {data[e.start]:#04x} at column {column} "
                          f"(offset {e.start}) is not valid UTF-8; save the file as UTF-8.", path=str(path),
                          line=line, key="") from None
    try:
        docs = _EventComposer(_check_depth(text, path)).documents()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise RecipeError(f"{path}:{line}: not valid YAML: {e.problem or e.context}.", path=str(path),
                          line=line, key="") from None
    except yaml.reader.ReaderError as e:
        # a character YAML does not allow (NUL, most control characters): name where it is
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise RecipeError(f"{path}:{line}: not valid YAML: character U+{e.character:04X} at column {column} is not "
                          f"allowed in YAML; remove it.", path=str(path), line=line, key="") from None
    except yaml.YAMLError as e:
        detail = " ".join(str(e).split())
        raise RecipeError(f"{path}:1: not valid YAML: {detail}.", path=str(path), line=1, key="") from None
    if len(docs) != 1 or docs[0] is None:
        raise RecipeError(f"{path}:1: a recipe is exactly one YAML document (a mapping).", path=str(path),
                          line=1, key="")
    root = _Node(docs[0], path, "")
    if root.kind != "map":
        raise root.error("a recipe is a mapping of keys (name, firmware, kernel, ...).", key="(top level)")
    top = root.mapping({
        "schema": f"the recipe schema version ({SCHEMA})",
        "name": "the bundle's name",
        "source_date_epoch": "the timestamp (seconds since 1970) written into every output",
        "firmware": "the OVMF firmware",
        "kernel": "the Linux kernel",
        "initrd": "what goes into the initrd",
        "cmdline": "the kernel command line, measured byte for byte",
        "shapes": "the VM shapes to publish launch digests for",
        "launch": "launch-snp.sh defaults (memory_mib, policy)",
        "id_block": "keys and fields of the ID block the bundle carries for every shape",
        "rootfs": "the application's root filesystem (dm-verity protected)",
        "agent": "the attestation agent in the initrd: {listen, app, attester, suite}",
        "runtime_policy": "what the guest lets the application do: {clients, egress, debug, logs}",
    }, required=("name", "source_date_epoch", "firmware", "kernel", "initrd", "cmdline", "shapes"))

    if "schema" in top and top["schema"].int() != SCHEMA:
        raise top["schema"].error(f"this blindbox reads recipe schema {SCHEMA}; upgrade blindbox.")
    name = top["name"].str()
    if not _NAME.fullmatch(name):
        raise top["name"].error(f"{name!r} must be 1-64 letters, digits, '.', '_' or '-' (it names a "
                                f"directory).")
    sde = top["source_date_epoch"].int(lo=0, hi=(1 << 32) - 1)

    fw_node = top["firmware"]
    fw_fields = fw_node.mapping({**_SOURCE_KEYS, "path": "the firmware file inside the Debian package"})
    firmware = _source(fw_node, fw_fields, "firmware", member_key="path", member_required="debian" in fw_fields)
    fw_kind = firmware.describe()

    k_node = top["kernel"]
    k_fields = k_node.mapping({**_SOURCE_KEYS,
                               "require_config": "kernel config options the guest needs, e.g. CONFIG_TSM_REPORTS"})
    if "debian" not in k_fields:
        raise k_node.error("the kernel comes from a Debian package (debian: linux-image-amd64, suite: ...); "
                           "its modules and config are read from the same package.")
    kernel_src = _source(k_node, k_fields, "kernel")
    req: list[str] = []
    if "require_config" in k_fields:
        for item in k_fields["require_config"].list():
            opt = item.str()
            if not _CONFIG.fullmatch(opt):
                raise item.error(f"{opt!r} is not a kernel config option such as CONFIG_TSM_REPORTS.")
            if opt not in req:
                req.append(opt)
    kernel = KernelSpec(kernel_src, tuple(req))

    i_node = top["initrd"]
    i_fields = i_node.mapping({
        "busybox": "the static busybox (debian: busybox-static)",
        "init": "the /init script: content or a source (default: the blindbox init)",
        "app_command": "a shell command the default init runs after its checks",
        "modules": "kernel modules to load-ready in the initrd",
        "files": "extra files",
        "binaries": "ELF binaries from Debian packages, with their libraries",
        "compression": f"one of {', '.join(RECIPE_COMPRESSIONS)}",
    }, required=("busybox",))
    bb_node = i_fields["busybox"]
    bb_fields = bb_node.mapping({**_SOURCE_KEYS, "path": "the busybox binary inside the package"})
    busybox = _source(bb_node, bb_fields, "busybox", member_key="path", member_default="/bin/busybox")
    init = None
    if "init" in i_fields:
        init = _file_entry(i_fields["init"], dest_required=False, name_prefix="init", default_mode=0o755)
    app_command = None
    if "app_command" in i_fields:
        if init is not None:
            raise i_fields["app_command"].error("the default init runs app_command; with your own 'init' "
                                                "script, start the application from that script instead.")
        app_command = i_fields["app_command"].str()
        if "\0" in app_command:
            raise i_fields["app_command"].error("contains a NUL byte.")
    modules: list[str] = []
    if "modules" in i_fields:
        for item in i_fields["modules"].list():
            m = item.str()
            if not _MODULE.fullmatch(m):
                raise item.error(f"{m!r} is not a module name such as sev-guest.")
            if m.replace("-", "_") in [x.replace("-", "_") for x in modules]:
                raise item.error(f"module {m} is listed twice.")
            modules.append(m)
    files: list[FileEntry] = []
    seen: dict[str, int] = {"/init": i_fields["init"].line if "init" in i_fields else i_node.line}
    if "files" in i_fields:
        for item in i_fields["files"].list():
            f = _file_entry(item, dest_required=True, name_prefix="file:", default_mode=0o644)
            if f.path in seen:
                raise item.error(f"{f.path} is already placed in the initrd (line {seen[f.path]}).")
            seen[f.path] = item.line
            files.append(f)
    binaries: list[BinaryEntry] = []
    if "binaries" in i_fields:
        for item in i_fields["binaries"].list():
            bf = item.mapping({"debian": _SOURCE_KEYS["debian"], "suite": _SOURCE_KEYS["suite"],
                               "arch": _SOURCE_KEYS["arch"], "path": "the binary inside the package",
                               "dest": "where it goes in the initrd (default: path)"},
                              required=("debian", "suite", "path"))
            src_path = _posix_abs(bf["path"])
            dest = _posix_abs(bf["dest"]) if "dest" in bf else src_path
            if dest in seen:
                raise item.error(f"{dest} is already placed in the initrd (line {seen[dest]}).")
            seen[dest] = item.line
            src = _source(item, bf, f"binary:{dest}", member_key="path", member_required=True)
            binaries.append(BinaryEntry(src_path, dest, src, item.line))
    compression = "gzip"
    if "compression" in i_fields:
        compression = i_fields["compression"].str()
        if compression == "xz":
            raise i_fields["compression"].error(
                "compression 'xz' is not offered: its stream would come from this host's liblzma, so another host "
                "could build another initrd; use gzip (compressed by the zlib the lock pins) or none.")
        if compression not in RECIPE_COMPRESSIONS:
            raise i_fields["compression"].error(f"unknown compression {compression!r}; use one of "
                                                f"{', '.join(RECIPE_COMPRESSIONS)}.")
    rootfs = None
    if "rootfs" in top:
        rootfs, dmsetup = _rootfs(top["rootfs"], kernel_src, seen)
        binaries.append(dmsetup)
    initrd = InitrdSpec(busybox, init, app_command, tuple(modules), tuple(files), tuple(binaries), compression)

    cmdline = _cmdline(top["cmdline"])

    sets = tuple(_shape_set(item, fw_kind) for item in top["shapes"].list(nonempty=True))

    launch = LaunchSpec()
    launch_policy_line = None
    launch_policy_node: _Node | None = None
    if "launch" in top:
        lf = top["launch"].mapping({"memory_mib": "guest memory in MiB (default 2048)",
                                    "policy": "the SNP guest policy (default 0x30000)"})
        launch = LaunchSpec(
            memory_mib=lf["memory_mib"].int(lo=64, hi=1 << 22) if "memory_mib" in lf else 2048,
            policy=lf["policy"].int(lo=0, hi=(1 << 64) - 1, hex_str=True) if "policy" in lf else 0x30000)
        problem = guest_policy_problem(launch.policy)
        if problem is not None:
            raise lf["policy"].error(f"{problem}; the firmware launches no guest with such a policy.")
        launch_policy_line = lf["policy"].line if "policy" in lf else None
        launch_policy_node = lf.get("policy")

    id_block = _id_block(top["id_block"], launch, launch_policy_line) if "id_block" in top else None

    agent = _agent(top["agent"], rootfs, top["cmdline"]) if "agent" in top else None
    runtime_policy = None
    if "runtime_policy" in top:
        runtime_policy = _runtime_policy(top["runtime_policy"], rootfs, agent, top["cmdline"], launch_policy_node,
                                         launch)
        rp_node = top["runtime_policy"]
        if NFT_DEST in seen:
            raise rp_node.error(f"the initrd already places {NFT_DEST} (line {seen[NFT_DEST]}), but with "
                                f"runtime_policy the initrd carries nft from Debian's nftables; remove it from the "
                                f"initrd.", key="runtime_policy", line=rp_node.key_line)
        assert kernel_src.suite is not None  # the kernel comes from a Debian package
        nft_src = InputSpec(f"binary:{NFT_DEST}", "debian", rp_node.key_line, package="nftables",
                            suite=kernel_src.suite, arch=kernel_src.arch, member=NFT_DEST)
        nft = BinaryEntry(NFT_DEST, NFT_DEST, nft_src, rp_node.key_line)
        runtime_policy = replace(runtime_policy, nft=nft)
        initrd = replace(initrd, binaries=initrd.binaries + (nft,))
    # only the build may commit the command line to a runtime policy, from the recipe's runtime_policy
    _refuse_build_param(top["cmdline"], RUNTIME_POLICY_PARAM, "runtime_policy")

    return Recipe(path=path, sha256=hashlib.sha256(data).hexdigest(), name=name, source_date_epoch=sde,
                  firmware=firmware, kernel=kernel, initrd=initrd, cmdline=cmdline, shape_sets=sets,
                  launch=launch, id_block=id_block, rootfs=rootfs, agent=agent, runtime_policy=runtime_policy)


def _agent(n: _Node, rootfs: RootfsSpec | None, cmdline_node: _Node) -> AgentSpec:
    """``agent:``: the attestation agent; it needs a root filesystem with network."""
    if n.kind == "null":
        fields: dict[str, _Node] = {}
    else:
        fields = n.mapping({
            "listen": "the TCP port the agent accepts attested TLS on (default 8443)",
            "app": "the application's TCP port on 127.0.0.1 the agent relays to (default 8080)",
            "attester": f"where reports come from: {', '.join(AGENT_ATTESTERS)} (default hardware)",
            "suite": "the Debian suite of the agent's Python and openssl (default bookworm)",
        })
    if rootfs is None or not rootfs.network:
        why = "there is no rootfs" if rootfs is None else \
            f"rootfs (line {rootfs.line}) has no network: true"
        raise n.error(f"the attestation agent serves clients over the network and relays to the application, but "
                      f"{why}; add a rootfs with network: true, or remove agent.", line=n.key_line)
    kw: dict[str, Any] = {}
    for key in ("listen", "app"):
        if key in fields:
            kw[key] = fields[key].int(lo=1, hi=65535)
    if kw.get("listen", 8443) == kw.get("app", 8080):
        raise (fields.get("listen") or n).error(
            f"the agent and the application cannot both use port {kw.get('listen', 8443)}; give agent.app the "
            f"port the application listens on and agent.listen another.")
    if "attester" in fields:
        attester = fields["attester"].str()
        if attester not in AGENT_ATTESTERS:
            raise fields["attester"].error(f"unknown attester {attester!r}; use hardware (the guest's SEV-SNP "
                                           f"device) or simulated (tests only).")
        kw["attester"] = attester
    if "suite" in fields:
        suite = fields["suite"].str()
        if suite not in SUITES:
            raise fields["suite"].error(f"unknown suite {suite!r}; use one of {', '.join(SUITES)} (codenames, "
                                        f"as blindbox fetches them: sid, not unstable).")
        if suite != "bookworm":
            raise fields["suite"].error(f"the agent runs on Python 3.11 ({', '.join(AGENT_PACKAGES)}), which "
                                        f"only bookworm has; use suite: bookworm.")
        kw["suite"] = suite
    _refuse_build_param(cmdline_node, ATTESTER_PARAM, "agent.attester")
    return AgentSpec(line=n.key_line, **kw)


def _refuse_build_param(cmdline_node: _Node, param: str, source: str) -> None:
    """Refuse a recipe cmdline that writes ``param`` (with or without a value): the build writes it from ``source``."""
    if any(w == param or w.startswith(param + "=") for w in str(cmdline_node.scalar()).split()):
        raise cmdline_node.error(f"{param} is set by the build from {source}; remove it from cmdline.")


def _plain(n: _Node, at: str, lines: dict[str, int]) -> Any:
    """The YAML value as plain data (mappings with string keys, lists, scalars); ``lines`` gets the line
    of every key path below ``at`` (``egress[1].port``), so a runtime policy refusal can name it."""
    if n.kind == "map":
        out: dict[str, Any] = {}
        for knode, vnode in n.node.value:
            kline = knode.start_mark.line + 1
            if _kind(knode) != "str":
                raise n.error(f"keys must be names, got {knode.value!r}.", line=kline)
            name = knode.value
            full = f"{at}.{name}" if at else name
            if name in out:
                raise n.error(f"{name!r} is given twice (first at line {lines[full]}).", key=f"{n.key}.{name}",
                              line=kline)
            lines[full] = kline
            out[name] = _plain(_Node(vnode, n.path, f"{n.key}.{name}", key_line=kline), full, lines)
        return out
    if n.kind == "seq":
        items = []
        for i, item in enumerate(n.list()):
            lines[f"{at}[{i}]"] = item.line
            items.append(_plain(item, f"{at}[{i}]", lines))
        return items
    return n.scalar()


def _runtime_policy(n: _Node, rootfs: RootfsSpec | None, agent: AgentSpec | None, cmdline_node: _Node,
                    launch_policy_node: _Node | None, launch: LaunchSpec) -> RuntimePolicySpec:
    """``runtime_policy:``, checked by :func:`measure.runtime_policy.parse_runtime_policy` at file:line,
    and against the rest of the recipe (it restricts an application root; debugging off means no
    debug bit and no kernel debug parameters)."""
    lines: dict[str, int] = {}
    doc = {} if n.kind == "null" else _plain(n, "", lines)
    try:
        policy = parse_runtime_policy(doc, str(n.path))
    except RuntimePolicyError as e:
        path = e.path
        line = n.key_line
        while path:
            if path in lines:
                line = lines[path]
                break
            path = path[:max(path.rfind("."), path.rfind("["), 0)]
        key = f"runtime_policy.{e.path}" if e.path else "runtime_policy"
        raise RecipeError(f"{n.path}:{line}: {key} {e.problem}", path=str(n.path), line=line, key=key) from None
    if rootfs is None:
        raise n.error("a runtime policy restricts the application in the root filesystem, but the recipe has no "
                      "rootfs; add one, or remove runtime_policy.", line=n.key_line)
    if policy.egress and not rootfs.network:
        raise n.error(f"egress rules need the network, but rootfs (line {rootfs.line}) has no network: true; add "
                      f"it, or remove the egress rules.", key="runtime_policy.egress", line=lines["egress"])
    if policy.clients is not None and agent is None:
        raise n.error("only the attestation agent can check client keys, but the recipe has no agent; add one, "
                      "or remove clients.", key="runtime_policy.clients", line=lines["clients"])
    if not policy.debug:
        if launch.policy & GUEST_POLICY_DEBUG:
            where = launch_policy_node if launch_policy_node is not None else n
            raise where.error(f"{launch.policy:#x} sets the SNP guest policy's DEBUG bit (19), which lets the host "
                              f"read and change the guest's memory, but runtime_policy (line {n.key_line}) has "
                              f"debug: false; clear bit 19 (e.g. 0x30000), or set runtime_policy.debug: true.")
        for word in str(cmdline_node.scalar()).split():
            name = word.split("=", 1)[0]
            if name in KERNEL_DEBUG_PARAMS or name.endswith(".dyndbg"):
                raise cmdline_node.error(
                    f"{word[:60]!r} is a kernel debugging option (or starts something other than the measured "
                    f"init), but runtime_policy (line {n.key_line}) has debug: false; remove it, or set "
                    f"runtime_policy.debug: true.")
    return RuntimePolicySpec(policy=policy, line=n.key_line)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if is_fifo_or_socket(path):
        # opening a FIFO nobody writes to waits for ever, and the lock file is found beside the recipe
        raise RecipeError(f"{path}: is a FIFO or socket; give the recipe's .yaml file, which has its lock file "
                          f"beside it.", path=str(path), line=0, key="")
    try:
        data = read_bounded(path, "recipe", MAX_RECIPE_BYTES)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file.", path=str(path), line=0, key="") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a directory; give the recipe's .yaml file.", path=str(path), line=0,
                          key="") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe ({e.strerror}).", path=str(path), line=0,
                          key="") from None
    return parse_recipe(data, path)
