"""A Debian kernel package: its release, bzImage and config, SEV-guest preflight, modules.

Works on an unpacked ``linux-image-*`` package tree (``boot/vmlinuz-<release>``,
``boot/config-<release>``, ``lib/modules/<release>/`` or ``usr/lib/modules/<release>/``).

The bzImage's setup header and its version string are read by :mod:`measure.bzimage`, the
calculator's reader of the kernel it measures, so that ``blindbox rederive`` re-derives the
release this step records from the same code.

Facts about the Debian packages this code relies on (checked on bookworm's 6.1):

- The package ships no ``modules.dep`` or ``modules.alias``: ``depmod`` runs in its
  postinst.  So :func:`module_closure` reads every module's ``.modinfo`` section
  (``name=``, ``depends=``, ``alias=``, ``softdep=``) itself and writes the two files the
  initrd's busybox ``modprobe`` reads.
- Bookworm's 6.1 modules are plain ``.ko`` (``CONFIG_MODULE_COMPRESS_NONE=y``); trixie's
  6.12 ships ``.ko.xz`` under ``/usr/lib/modules``.  Compressed modules are decompressed
  at build time (a pure function of the input; a module's signature sits inside the
  compressed data, so it survives) and stored as ``.ko``.  Bookworm's busybox 1.35
  ``modprobe`` does load a CRC32 ``.ko.xz`` on the 6.1 kernel, which lacks
  ``CONFIG_MODULE_DECOMPRESS`` (seen in a boot here: it decompresses in user space
  after ``finit_module`` fails), but that depends on busybox's build options; the
  initrd is compressed as a whole anyway.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import fnmatch
import io
import lzma
import os
import shutil
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from builder.errors import BuildError, ToolMissing
from builder.limits import MAX_KERNEL_TEXT_BYTES, MAX_MODULE_BYTES
from measure import bzimage as _bzimage
from measure import layout
from measure.record import record
from measure.bzimage import BzImageError, kernel_release
from measure.bzimage import BzImageHeader as BzImageHeader  # re-exported: declared with the calculator
from measure.errors import InputError
from measure.inputs import read_bounded


class KernelError(BuildError):
    """The kernel package is unusable: no or several kernels, no config, bad bzImage."""


class KernelPreflightFailed(BuildError):
    """The kernel's configuration lacks options an SEV-SNP guest of this project needs."""

    def __init__(self, message: str, report: "PreflightReport"):
        super().__init__(message)
        self.report = report


class ModuleError(BuildError):
    """A requested kernel module, or one of its dependencies, cannot be found or read."""


# -- the package --------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelImage:
    """Where things are in an unpacked kernel package."""

    tree: Path
    release: str
    bzimage: Path
    config: Path
    modules_dir: Path  # .../lib/modules/<release>


def _modules_dir(tree: Path, release: str) -> Path | None:
    for base in ("lib/modules", "usr/lib/modules"):
        d = tree / base / release
        if d.is_dir():
            return d
    return None


def find_kernel(tree: str | Path) -> KernelImage:
    """The one kernel in an unpacked ``linux-image-*`` tree."""
    tree = Path(tree)
    boot = tree / "boot"
    images = sorted(p.name[len("vmlinuz-"):] for p in boot.glob("vmlinuz-*")) if boot.is_dir() else []
    if not images:
        raise KernelError(f"no boot/vmlinuz-* in the kernel package tree {tree}; give an unpacked "
                          f"linux-image-* package (not the linux-image-amd64 metapackage).")
    if len(images) > 1:
        raise KernelError(f"the kernel package tree {tree} holds several kernels ({', '.join(images)}); "
                          f"unpack one linux-image-* package per tree.")
    release = images[0]
    config = boot / f"config-{release}"
    if not config.is_file():
        raise KernelError(f"the kernel package tree {tree} has boot/vmlinuz-{release} but no boot/config-{release}; "
                          f"use a Debian linux-image package, which ships both.")
    modules_dir = _modules_dir(tree, release)
    if modules_dir is None:
        raise KernelError(f"the kernel package tree {tree} has no lib/modules/{release}; use the linux-image "
                          f"package that matches the kernel, not a -unsigned or headers package.")
    bzimage = boot / f"vmlinuz-{release}"
    named = kernel_release(bzimage_version(bzimage))
    if named != release:
        raise KernelError(f"boot/vmlinuz-{release} in {tree} says it is kernel {named!r}; the "
                          f"package is inconsistent, fetch it again.")
    return KernelImage(tree, release, bzimage, config, modules_dir)


def bzimage_version(path: str | Path) -> str:
    """The version string in a bzImage's setup header (:func:`measure.bzimage.bzimage_version`)."""
    try:
        return _bzimage.bzimage_version(path)
    except BzImageError as e:
        raise KernelError(str(e)) from e


# -- configuration ------------------------------------------------------------------------
def _opt(name: str) -> str:
    return name[len("CONFIG_"):] if name.startswith("CONFIG_") else name


@dataclass(frozen=True)
class KernelConfig:
    """``/boot/config-<release>``: option name (without ``CONFIG_``) -> value (``y``, ``m``, ``n``, ...)."""

    values: dict[str, str]

    def get(self, name: str) -> str:
        """``y``, ``m``, a string or number, or ``n`` for unset and absent options."""
        return self.values.get(_opt(name), "n")

    def __contains__(self, name: str) -> bool:
        return _opt(name) in self.values

    @classmethod
    def parse(cls, text: str, *, where: str = "config") -> "KernelConfig":
        values: dict[str, str] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                if line.startswith("# CONFIG_") and line.endswith(" is not set"):
                    values[line[len("# CONFIG_"):-len(" is not set")]] = "n"
                continue
            name, sep, value = line.partition("=")
            if not sep or not name.startswith("CONFIG_"):
                raise KernelError(f"{where}:{lineno}: {line[:60]!r} is not a kernel config line "
                                  f"(CONFIG_NAME=value); give the package's boot/config-<release>.")
            values[name[len("CONFIG_"):]] = value
        return cls(values)

    @classmethod
    def load(cls, path: str | Path) -> "KernelConfig":
        path = Path(path)
        try:
            text = read_bounded(path, "kernel config", MAX_KERNEL_TEXT_BYTES).decode("utf-8", "replace")
        except OSError as e:
            raise KernelError(f"cannot read the kernel config {path}: {e.strerror}.") from e
        return cls.parse(text, where=str(path))


@dataclass(frozen=True)
class Requirement:
    """One need of the guest: any of ``options`` (built in, or as a module if allowed)."""

    options: tuple[str, ...]
    why: str
    builtin: bool = False  # True: must be =y (a bool option or needed before modules load)
    modules: tuple[str, ...] = ()  # module name per option, when it may be =m

    def module_for(self, option: str) -> str | None:
        if option in self.options and self.modules:
            return self.modules[self.options.index(option)]
        return None


#: What an SEV-SNP guest built by this project needs from its kernel.
REQUIRED: tuple[Requirement, ...] = (
    Requirement(("AMD_MEM_ENCRYPT",), "SEV, SEV-ES and SEV-SNP guest memory encryption", builtin=True),
    Requirement(("EFI_STUB",), "the measured boot path: OVMF starts the kernel as an EFI application",
                builtin=True),
    Requirement(("BLK_DEV_INITRD",), "booting from this project's initrd", builtin=True),
    Requirement(("DEVTMPFS",), "/dev in the initrd (the init mounts devtmpfs)", builtin=True),
    Requirement(("BINFMT_SCRIPT",), "the initrd's /init shell script", builtin=True),
    Requirement(("SEV_GUEST",), "/dev/sev-guest, to request attestation reports", modules=("sev-guest",)),
    Requirement(("VIRTIO_PCI",), "virtio devices on QEMU's PCI bus", modules=("virtio_pci",)),
    Requirement(("VIRTIO_BLK",), "the disk that carries the application root file system",
                modules=("virtio_blk",)),
    Requirement(("BLK_DEV_DM",), "device mapper, under dm-verity", modules=("dm-mod",)),
    Requirement(("DM_VERITY",), "integrity of the application root file system", modules=("dm-verity",)),
    Requirement(("EROFS_FS", "SQUASHFS"), "a read-only root file system image", modules=("erofs", "squashfs")),
)

#: Useful but not needed; reported, never fatal.
OPTIONAL: tuple[Requirement, ...] = (
    Requirement(("TSM_REPORTS",), "attestation reports through configfs-tsm (Linux >= 6.7)", modules=("tsm",)),
    Requirement(("SERIAL_8250_CONSOLE",), "the console on ttyS0 that smoke boots read", builtin=True),
    Requirement(("UNACCEPTED_MEMORY",), "lazy acceptance of SNP guest memory (Linux >= 6.5)", builtin=True),
)


def network_requirement() -> tuple[Requirement, ...]:
    """What a guest with a network device needs besides :data:`REQUIRED`: the virtio NIC."""
    return (Requirement(("VIRTIO_NET",), "the guest's network device (virtio-net), for a recipe with network",
                        modules=("virtio_net",)),)


def decompressor_requirement(compression: str) -> tuple[Requirement, ...]:
    """The option the kernel needs to unpack an initrd compressed with ``compression``."""
    option = {"gzip": "RD_GZIP", "xz": "RD_XZ"}.get(compression)
    if option is None:
        return ()
    return (Requirement((option,), f"unpacking the {compression}-compressed initrd", builtin=True),)


@dataclass(frozen=True)
class Check:
    """How the kernel meets one requirement.

    ``status``: ``builtin``; ``module`` (the initrd must carry ``module``); ``module-only``
    (the option is =m but must be built in); ``missing``.
    """

    requirement: Requirement
    status: str
    option: str | None = None
    module: str | None = None

    @property
    def satisfied(self) -> bool:
        return self.status in ("builtin", "module")

    def describe(self) -> str:
        names = " or ".join(f"CONFIG_{o}" for o in self.requirement.options)
        if self.status == "builtin":
            return f"CONFIG_{self.option}=y ({self.requirement.why})"
        if self.status == "module":
            return f"CONFIG_{self.option}=m: the initrd must carry {self.module} ({self.requirement.why})"
        if self.status == "module-only":
            return f"CONFIG_{self.option}=m but it must be built in (=y) ({self.requirement.why})"
        wanted = "=y" if self.requirement.builtin or not self.requirement.modules else "=y or =m"
        return f"{names} missing ({self.requirement.why}; it must be {wanted})"


@dataclass(frozen=True)
class PreflightReport:
    required: tuple[Check, ...]
    optional: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.satisfied for c in self.required)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.required if not c.satisfied)

    @property
    def modules(self) -> tuple[str, ...]:
        """Modules the initrd must carry for the satisfied checks (required first)."""
        return tuple(c.module for c in self.required + self.optional if c.status == "module" and c.module)

    def lines(self) -> list[str]:
        out = []
        for kind, checks in (("required", self.required), ("optional", self.optional)):
            for c in checks:
                mark = "ok" if c.satisfied else ("MISSING" if kind == "required" else "absent")
                out.append(f"{kind} {mark}: {c.describe()}")
        return out

    def raise_if_failed(self, kernel: str = "the kernel") -> None:
        if not self.ok:
            what = "; ".join(c.describe() for c in self.failures)
            raise KernelPreflightFailed(f"{kernel} cannot run this SEV-SNP guest: {what}; choose a kernel "
                                        f"package built with these options.", self)


def _check(config: KernelConfig, req: Requirement) -> Check:
    module_only = None
    for option in req.options:
        value = config.get(option)
        if value == "y":
            return Check(req, "builtin", option)
        if value == "m":
            if not req.builtin:
                return Check(req, "module", option, req.module_for(option))
            module_only = module_only or option
    if module_only:
        return Check(req, "module-only", module_only)
    return Check(req, "missing")


def preflight(config: KernelConfig, required: tuple[Requirement, ...] = REQUIRED,
              optional: tuple[Requirement, ...] = OPTIONAL) -> PreflightReport:
    """Which required and optional options the kernel has, as built-ins or as modules."""
    return PreflightReport(tuple(_check(config, r) for r in required), tuple(_check(config, r) for r in optional))


# -- modules ------------------------------------------------------------------------------
_SUFFIXES = {".ko": None, ".ko.xz": "xz", ".ko.zst": "zst", ".ko.gz": "gz"}


def modname(name: str) -> str:
    """The kernel's module name: basename without extensions, ``-`` as ``_``."""
    base = name.rsplit("/", 1)[-1]
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    return base.replace("-", "_")


def _split_module_file(relpath: str) -> tuple[str, str | None] | None:
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if relpath.endswith(suffix):
            return relpath[:-len(suffix)] + ".ko", _SUFFIXES[suffix]
    return None


@dataclass(frozen=True)
class KernelModule:
    name: str  # normalized: underscores
    path: str  # relative to lib/modules/<release>, as shipped (".ko.xz" kept)
    depends: tuple[str, ...]
    softdeps: tuple[str, ...]  # "pre:" and "post:" names (may be aliases)
    aliases: tuple[str, ...]

    @property
    def initrd_path(self) -> str:
        """Relative path in the initrd: always an uncompressed ``.ko``."""
        split = _split_module_file(self.path)
        assert split is not None
        return split[0]


def _module_too_large(path: Path) -> ModuleError:
    return ModuleError(f"the kernel module {path} is larger than {MAX_MODULE_BYTES:,} bytes (compressed or not), "
                       f"more than any module is (docs/limits.md); fetch the package again.")


def read_module(path: Path, compression: str | None) -> bytes:
    """The uncompressed ELF bytes of a module file, at most MAX_MODULE_BYTES of them."""
    try:
        raw = read_bounded(path, "kernel module", MAX_MODULE_BYTES)
    except OSError as e:
        raise ModuleError(f"cannot read the kernel module {path}: {e.strerror}.") from e
    except InputError:
        raise _module_too_large(path) from None
    try:
        if compression is None:
            return raw
        if compression == "xz":
            dec = lzma.LZMADecompressor()
            out = dec.decompress(raw, max_length=MAX_MODULE_BYTES + 1)
            if len(out) > MAX_MODULE_BYTES:
                raise _module_too_large(path)
            if not dec.eof:
                raise EOFError("compressed data ended before the end-of-stream marker")
            return out
        if compression == "gz":
            gz = zlib.decompressobj(wbits=31)
            out = gz.decompress(raw, MAX_MODULE_BYTES + 1)
            if len(out) > MAX_MODULE_BYTES:
                raise _module_too_large(path)
            if not gz.eof:
                raise EOFError("compressed data ended before the end-of-stream marker")
            return out
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as e:
        raise ModuleError(f"the kernel module {path} is not valid {compression} data: {e}; fetch the package again.") \
            from e
    zstd = shutil.which("zstd")
    if zstd is None:
        raise ToolMissing("zstd", "zstd")
    with subprocess.Popen([zstd, "-dc", "-q", "--", str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}) as proc:
        assert proc.stdout is not None and proc.stderr is not None  # both are pipes
        out = proc.stdout.read(MAX_MODULE_BYTES + 1)
        if len(out) > MAX_MODULE_BYTES:
            proc.kill()
            proc.wait()
            raise _module_too_large(path)
        err = proc.stderr.read()
        rc = proc.wait()
    if rc != 0:
        raise ModuleError(f"the kernel module {path} is not valid zstd data: "
                          f"{err.decode(errors='replace').strip()}; fetch the package again.")
    return out


@layout.struct(size=0x40, spec="System V ABI (gABI) ch. 4, Elf64_Ehdr")
@record
class Elf64Header(layout.Struct):
    e_ident: bytes = layout.raw(0x00, 16)
    e_type: int = layout.u16(0x10)
    e_machine: int = layout.u16(0x12)
    e_version: int = layout.u32(0x14)
    e_entry: int = layout.u64(0x18)
    e_phoff: int = layout.u64(0x20)
    e_shoff: int = layout.u64(0x28)
    e_flags: int = layout.u32(0x30)
    e_ehsize: int = layout.u16(0x34)
    e_phentsize: int = layout.u16(0x36)
    e_phnum: int = layout.u16(0x38)
    e_shentsize: int = layout.u16(0x3A)
    e_shnum: int = layout.u16(0x3C)
    e_shstrndx: int = layout.u16(0x3E)


@layout.struct(size=0x40, spec="System V ABI (gABI) ch. 4, Elf64_Shdr")
@record
class Elf64SectionHeader(layout.Struct):
    sh_name: int = layout.u32(0x00)  # offset of the name in the section-name string table
    sh_type: int = layout.u32(0x04)
    sh_flags: int = layout.u64(0x08)
    sh_addr: int = layout.u64(0x10)
    sh_offset: int = layout.u64(0x18)
    sh_size: int = layout.u64(0x20)
    sh_link: int = layout.u32(0x28)
    sh_info: int = layout.u32(0x2C)
    sh_addralign: int = layout.u64(0x30)
    sh_entsize: int = layout.u64(0x38)


def _modinfo_section(data: bytes) -> bytes | None:
    """The ``.modinfo`` bytes of a little-endian ELF64 file, read from the section headers.

    Reading ~4000 modules for their aliases takes about half a second this way; pyelftools
    takes several (it builds every section and its structures), so only other ELF flavours
    go through it.
    """
    if len(data) < Elf64Header.SIZE:
        raise ValueError("section header table out of range")
    ehdr = Elf64Header.from_bytes(data[:Elf64Header.SIZE])
    shoff, shentsize, shnum = ehdr.e_shoff, ehdr.e_shentsize, ehdr.e_shnum
    if shentsize < Elf64SectionHeader.SIZE or ehdr.e_shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        raise ValueError("section header table out of range")

    def header(i: int) -> Elf64SectionHeader:
        h = shoff + i * shentsize
        return Elf64SectionHeader.from_bytes(data[h:h + Elf64SectionHeader.SIZE], base=h)

    strtab = header(ehdr.e_shstrndx)
    names = data[strtab.sh_offset:strtab.sh_offset + strtab.sh_size]
    for i in range(shnum):
        sec = header(i)
        if names[sec.sh_name:sec.sh_name + 9] == b".modinfo\0":
            if sec.sh_offset + sec.sh_size > len(data):
                raise ValueError(".modinfo out of range")
            return data[sec.sh_offset:sec.sh_offset + sec.sh_size]
    return None


def modinfo(data: bytes, *, where: str) -> dict[str, list[str]]:
    """The ``key=value`` strings of a module's ``.modinfo`` section, grouped by key."""
    if data[:4] != b"\x7fELF":
        raise ModuleError(f"{where} is not an ELF file; it is not a kernel module.")
    try:
        if data[4:6] == b"\x02\x01":  # ELFCLASS64, ELFDATA2LSB
            section = _modinfo_section(data)
        else:
            sec = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
            section = None if sec is None else sec.data()
    except (ELFError, ValueError) as e:
        raise ModuleError(f"{where} is a damaged ELF file ({e}); fetch the kernel package again.") from e
    if section is None:
        raise ModuleError(f"{where} has no .modinfo section; it is not a kernel module.")
    info: dict[str, list[str]] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def _softdeps(values: list[str]) -> tuple[str, ...]:
    names: list[str] = []
    for value in values:
        for token in value.split():
            if token not in ("pre:", "post:"):
                names.append(token)
    return tuple(names)


class ModuleTree:
    """The modules of one kernel release in an unpacked package tree, read lazily."""

    def __init__(self, tree: str | Path, release: str):
        self.tree = Path(tree)
        self.release = release
        base = _modules_dir(self.tree, release)
        if base is None:
            raise ModuleError(f"no lib/modules/{release} in the kernel package tree {self.tree}; the release "
                              f"and the package do not match.")
        self.base = base
        self._files: dict[str, tuple[str, str | None]] = {}  # name -> (relpath, compression)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, fn), base).replace(os.sep, "/")
                split = _split_module_file(rel)
                if split is None:
                    continue
                name = modname(fn)
                if name in self._files:
                    raise ModuleError(f"kernel {release} has two files for module {name}: "
                                      f"{self._files[name][0]} and {rel}; the package tree is mixed up.")
                self._files[name] = (rel, split[1])
        builtin_file = base / "modules.builtin"
        self.builtin: frozenset[str] = frozenset(
            modname(line.strip()) for line in read_bounded(builtin_file, "modules.builtin", MAX_KERNEL_TEXT_BYTES)
            .decode("utf-8", "replace").splitlines() if line.strip()
        ) if builtin_file.is_file() else frozenset()
        self._info: dict[str, KernelModule] = {}
        self._all_aliases: list[tuple[str, str]] | None = None

    def names(self) -> list[str]:
        return sorted(self._files)

    def data(self, name: str) -> bytes:
        rel, compression = self._files[name]
        return read_module(self.base / rel, compression)

    def module(self, name: str) -> KernelModule:
        name = modname(name)
        if name not in self._info:
            if name not in self._files:
                raise ModuleError(f"kernel {self.release} has no module {name}.")
            rel, _ = self._files[name]
            info = modinfo(self.data(name), where=f"module {rel}")
            declared = info.get("name", [name])[0]
            if modname(declared) != name:
                raise ModuleError(f"module file {rel} declares the name {declared!r}; the package tree is corrupt.")
            depends = tuple(modname(d) for v in info.get("depends", []) for d in v.split(",") if d)
            self._info[name] = KernelModule(name, rel, depends, _softdeps(info.get("softdep", [])),
                                            tuple(info.get("alias", [])))
        return self._info[name]

    def _aliases(self) -> list[tuple[str, str]]:
        if self._all_aliases is None:
            self._all_aliases = [(modname(a), n) for n in self.names() for a in self.module(n).aliases]
        return self._all_aliases

    def resolve(self, request: str) -> tuple[str, ...]:
        """Module names for a name or alias (``-`` and ``_`` are equivalent); () if built in."""
        name = modname(request)
        if name in self._files:
            return (name,)
        if name in self.builtin:
            return ()
        matches = sorted({mod for pattern, mod in self._aliases() if fnmatch.fnmatchcase(name, pattern)})
        if matches:
            return tuple(matches)
        raise ModuleError(f"kernel {self.release} has no module or alias {request!r}, and it is not built in; check "
                          f"the name (as modprobe takes it, e.g. 'sev-guest') or the kernel package.")


@dataclass(frozen=True)
class ModuleClosure:
    """The modules an initrd carries for some requested names, with their dependencies."""

    release: str
    modules: tuple[KernelModule, ...]  # sorted by path
    requested: tuple[tuple[str, tuple[str, ...]], ...]  # (request, module names it resolved to)
    builtin: tuple[str, ...]  # requests that are built into the kernel
    load_order: dict[str, tuple[str, ...]] = field(repr=False, compare=False)  # name -> deps, deepest first, name last
    tree: ModuleTree = field(repr=False, compare=False)

    @property
    def paths(self) -> list[str]:
        """Paths of the module files relative to ``lib/modules/<release>``, as shipped."""
        return [m.path for m in self.modules]

    @property
    def prefix(self) -> str:
        return f"lib/modules/{self.release}"

    def files(self) -> list[tuple[str, bytes]]:
        """(initrd path, uncompressed module bytes) for every module."""
        return [(f"{self.prefix}/{m.initrd_path}", self.tree.data(m.name)) for m in self.modules]

    def modules_dep(self) -> bytes:
        """``modules.dep`` as depmod writes it: every dependency, the first-loaded last."""
        by_name = {m.name: m for m in self.modules}
        lines = []
        for m in self.modules:
            deps = [by_name[d].initrd_path for d in reversed(self.load_order[m.name][:-1])]
            lines.append(f"{m.initrd_path}:" + "".join(f" {d}" for d in deps))
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def modules_alias(self) -> bytes:
        """``modules.alias`` for the carried modules (``alias PATTERN NAME``), sorted."""
        lines = sorted({f"alias {a} {m.name}" for m in self.modules for a in m.aliases})
        return ("\n".join(lines) + "\n").encode() if lines else b""


def module_closure(tree: str | Path | ModuleTree, release: str, names: list[str] | tuple[str, ...]) \
        -> ModuleClosure:
    """Resolve ``names`` (module names or aliases) and every dependency they pull in.

    ``depends=`` are hard dependencies (written to ``modules.dep``, so that busybox
    ``modprobe`` loads them first).  ``softdep=`` modules are carried too, so that the
    kernel's own ``request_module`` (which runs ``/sbin/modprobe``) finds them through
    ``modules.alias``, but are not made hard dependencies: a softdep such as
    ``crc32c-intel`` may legitimately fail to load on a CPU without SSE4.2, and busybox
    stops loading a chain at its first failure.
    """
    mt = tree if isinstance(tree, ModuleTree) else ModuleTree(tree, release)
    if mt.release != release:
        raise ModuleError(f"module tree is for kernel {mt.release}, not {release}.")
    requested: list[tuple[str, tuple[str, ...]]] = []
    builtin: list[str] = []
    todo: list[str] = []
    for request in names:
        if not isinstance(request, str) or not request.strip():
            raise ModuleError(f"kernel module name {request!r} is empty; give a name such as 'sev-guest'.")
        resolved = mt.resolve(request)
        requested.append((request, resolved))
        if not resolved:
            builtin.append(request)
        todo.extend(resolved)

    carried: dict[str, KernelModule] = {}
    while todo:
        name = todo.pop()
        if name in carried:
            continue
        mod = mt.module(name)
        carried[name] = mod
        for dep in mod.depends:
            if dep not in mt._files:
                if dep in mt.builtin:
                    continue
                raise ModuleError(f"module {mod.path} depends on {dep}, which kernel {release} neither ships nor "
                                  f"builds in; the package tree is incomplete.")
            todo.append(dep)
        for soft in mod.softdeps:
            try:
                todo.extend(mt.resolve(soft))
            except ModuleError:
                continue  # like modprobe: a missing soft dependency is not an error

    load_order: dict[str, tuple[str, ...]] = {}

    def order(name: str, stack: tuple[str, ...]) -> tuple[str, ...]:
        if name in load_order:
            return load_order[name]
        if name in stack:
            raise ModuleError(f"kernel modules {' -> '.join(stack + (name,))} depend on each other in a cycle.")
        seen: list[str] = []
        for dep in sorted(d for d in carried[name].depends if d in carried):
            for d in order(dep, stack + (name,)):
                if d not in seen:
                    seen.append(d)
        load_order[name] = tuple(seen) + (name,)
        return load_order[name]

    for name in carried:
        order(name, ())
    modules = tuple(sorted(carried.values(), key=lambda m: m.initrd_path))
    return ModuleClosure(release, modules, tuple(requested), tuple(builtin), load_order, mt)
