"""Small synthetic inputs for the build-step tests: ELF files, kernel modules, kernel trees.

Written from the ELF-64 and Linux boot-protocol layouts, so that unit tests control every
field (interpreter, DT_NEEDED, RUNPATH, .modinfo) without a compiler or the network.
"""

from __future__ import annotations

import lzma
import struct
from collections.abc import Sequence
from pathlib import Path

EM_X86_64 = 62
EM_AARCH64 = 183
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 15, 29


def _ehdr(etype: int, machine: int, phoff: int, phnum: int, shoff: int, shnum: int, shstrndx: int) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    return ident + struct.pack("<HHIQQQIHHHHHH", etype, machine, 1, 0, phoff, shoff, 0, 64, 56 if phnum else 0,
                               phnum, 64 if shnum else 0, shnum, shstrndx)


def make_elf(*, interp: str | None = None, needed: Sequence[str] = (), runpath: str | None = None,
             rpath: str | None = None, machine: int = EM_X86_64, static: bool = False) -> bytes:
    """An x86-64 ELF executable or shared object with the given dynamic entries."""
    if static:
        return _ehdr(ET_EXEC, machine, 0, 0, 0, 0, 0) + b"\x90" * 16
    strtab = bytearray(b"\0")

    def add(s: str) -> int:
        off = len(strtab)
        strtab.extend(s.encode() + b"\0")
        return off

    dyn = [(DT_NEEDED, add(n)) for n in needed]
    if rpath is not None:
        dyn.append((DT_RPATH, add(rpath)))
    if runpath is not None:
        dyn.append((DT_RUNPATH, add(runpath)))
    phnum = 2 + (interp is not None)
    data_start = 64 + 56 * phnum
    interp_bytes = (interp.encode() + b"\0") if interp is not None else b""
    interp_off = data_start
    strtab_off = interp_off + len(interp_bytes)
    dyn_off = (strtab_off + len(strtab) + 7) & ~7
    dyn += [(DT_STRTAB, strtab_off), (DT_STRSZ, len(strtab)), (DT_NULL, 0)]
    dyn_bytes = b"".join(struct.pack("<qQ", t, v) for t, v in dyn)
    total = dyn_off + len(dyn_bytes)
    phdrs = [struct.pack("<IIQQQQQQ", PT_LOAD, 5, 0, 0, 0, total, total, 0x1000)]
    if interp is not None:
        phdrs.append(struct.pack("<IIQQQQQQ", PT_INTERP, 4, interp_off, interp_off, interp_off, len(interp_bytes),
                                 len(interp_bytes), 1))
    phdrs.append(struct.pack("<IIQQQQQQ", PT_DYNAMIC, 6, dyn_off, dyn_off, dyn_off, len(dyn_bytes), len(dyn_bytes),
                             8))
    body = _ehdr(ET_DYN, machine, 64, phnum, 0, 0, 0) + b"".join(phdrs) + interp_bytes + bytes(strtab)
    body += bytes(dyn_off - len(body)) + dyn_bytes
    assert len(body) == total
    return body


def make_module(name: str, *, depends: Sequence[str] = (), aliases: Sequence[str] = (),
                softdeps: Sequence[str] = (), declared_name: str | None = None) -> bytes:
    """A relocatable ELF with a .modinfo section, as a kernel module has."""
    items = [f"alias={a}" for a in aliases]
    if softdeps:
        items.append("softdep=pre: " + " ".join(softdeps))
    items += [f"depends={','.join(depends)}", "intree=Y", f"name={declared_name or name}",
              "vermagic=6.1.0-test SMP mod_unload"]
    modinfo = b"".join(i.encode() + b"\0" for i in items)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    modinfo_off = 64
    shstr_off = modinfo_off + len(modinfo)
    sh_off = (shstr_off + len(shstrtab) + 7) & ~7
    shdrs = [bytes(64),
             struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, modinfo_off, len(modinfo), 0, 0, 1, 0),
             struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0)]
    body = _ehdr(ET_REL, EM_X86_64, 0, 0, sh_off, 3, 2) + modinfo + shstrtab
    return body + bytes(sh_off - len(body)) + b"".join(shdrs)


def make_bzimage(version: str) -> bytes:
    """Enough of a bzImage for the setup header checks: 'HdrS' and the version string."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    data[0x206:0x208] = (0x20F).to_bytes(2, "little")
    data[0x20E:0x210] = (0x400 - 0x200).to_bytes(2, "little")
    v = version.encode() + b"\0"
    data[0x400:0x400 + len(v)] = v
    return bytes(data)


CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_AMD_MEM_ENCRYPT=y
CONFIG_EFI_STUB=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_DEVTMPFS=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_SEV_GUEST=m
CONFIG_VIRTIO_PCI=m
CONFIG_VIRTIO_BLK=m
CONFIG_BLK_DEV_DM=m
CONFIG_DM_VERITY=m
# CONFIG_EROFS_FS is not set
CONFIG_SQUASHFS=y
CONFIG_RD_GZIP=y
CONFIG_LOCALVERSION=""
CONFIG_NR_CPUS=64
"""


def make_kernel_tree(root: Path, release: str = "6.1.0-test-amd64", *,
                     modules: dict[str, dict] | None = None, builtin: Sequence[str] = (),
                     config: str = CONFIG, usr_merged: bool = False) -> Path:
    """An unpacked-package-like tree: boot/vmlinuz, boot/config, lib/modules/<release>/...

    ``modules`` maps a path below ``lib/modules/<release>`` (``.ko`` or ``.ko.xz``) to the
    keyword arguments of :func:`make_module` (``name`` defaults to the file name).
    """
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(make_bzimage(f"{release} (test@example) #1 SMP"))
    (root / "boot" / f"config-{release}").write_text(config)
    base = root / ("usr/lib/modules" if usr_merged else "lib/modules") / release
    base.mkdir(parents=True)
    for rel, kw in (modules or {}).items():
        kw = dict(kw)
        fname = rel.rsplit("/", 1)[-1]
        name = kw.pop("name", fname.split(".", 1)[0].replace("-", "_"))
        data = make_module(name, **kw)
        if rel.endswith(".xz"):
            data = lzma.compress(data, check=lzma.CHECK_CRC32)
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (base / "modules.builtin").write_text("".join(f"{b}\n" for b in builtin))
    return root
