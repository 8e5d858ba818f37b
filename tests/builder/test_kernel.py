"""builder.steps.kernel: kernel package layout, config preflight, module closure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from builder.steps import kernel as k
from builder.steps.kernel import KernelConfig, KernelError, ModuleError, Requirement
from tests.tools import require

from .stepfakes import CONFIG, make_bzimage, make_kernel_tree

REL = "6.1.0-test-amd64"

MODULES = {
    "kernel/drivers/virt/coco/sev-guest/sev-guest.ko": {"aliases": ["platform:sev-guest"]},
    "kernel/drivers/block/virtio_blk.ko": {"depends": ["virtio", "virtio_ring"], "aliases": ["virtio:d00000002v*"]},
    "kernel/drivers/virtio/virtio.ko": {"depends": ["virtio_ring"]},
    "kernel/drivers/virtio/virtio_ring.ko": {},
    "kernel/drivers/md/dm-mod.ko": {"aliases": ["devname:mapper/control"]},
    "kernel/drivers/md/dm-bufio.ko": {"depends": ["dm-mod"]},
    "kernel/drivers/md/dm-verity.ko": {"depends": ["reed_solomon", "dm-mod", "dm-bufio"]},
    "kernel/lib/reed_solomon/reed_solomon.ko": {},
    "kernel/fs/erofs/erofs.ko.xz": {"depends": ["libcrc32c"], "aliases": ["fs-erofs"]},
    "kernel/lib/libcrc32c.ko": {"softdeps": ["crc32c"]},
    "kernel/crypto/crc32c_generic.ko": {"aliases": ["crc32c", "crypto-crc32c"]},
    "kernel/arch/x86/crypto/crc32c-intel.ko": {"aliases": ["crc32c", "crypto-crc32c"]},
}


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_kernel_tree(tmp_path / "pkg", REL, modules=MODULES, builtin=["kernel/fs/squashfs/squashfs.ko"])


# -- package layout ------------------------------------------------------------------------
def test_find_kernel(tree):
    img = k.find_kernel(tree)
    assert img.release == REL
    assert img.bzimage == tree / "boot" / f"vmlinuz-{REL}"
    assert img.config == tree / "boot" / f"config-{REL}"
    assert img.modules_dir == tree / "lib/modules" / REL


def test_find_kernel_merged_usr(tmp_path):
    tree = make_kernel_tree(tmp_path / "pkg", REL, modules={"kernel/a.ko": {}}, usr_merged=True)
    assert k.find_kernel(tree).modules_dir == tree / "usr/lib/modules" / REL


def test_find_kernel_errors(tmp_path, tree):
    with pytest.raises(KernelError, match="no boot/vmlinuz"):
        k.find_kernel(tmp_path / "empty")
    (tree / "boot" / "vmlinuz-6.1.0-other").write_bytes(make_bzimage("6.1.0-other"))
    with pytest.raises(KernelError, match="several kernels"):
        k.find_kernel(tree)


def test_find_kernel_needs_config_modules_and_matching_image(tmp_path):
    t = make_kernel_tree(tmp_path / "a", REL)
    (t / "boot" / f"config-{REL}").unlink()
    with pytest.raises(KernelError, match="no boot/config"):
        k.find_kernel(t)
    t = make_kernel_tree(tmp_path / "b", REL)
    shutil.rmtree(t / "lib")
    with pytest.raises(KernelError, match="no lib/modules"):
        k.find_kernel(t)
    t = make_kernel_tree(tmp_path / "c", REL)
    (t / "boot" / f"vmlinuz-{REL}").write_bytes(make_bzimage("5.10.0-9-amd64 #1"))
    with pytest.raises(KernelError, match="says it is kernel '5.10.0-9-amd64'"):
        k.find_kernel(t)
    (t / "boot" / f"vmlinuz-{REL}").write_bytes(b"MZ" + bytes(4000))
    with pytest.raises(KernelError, match="not a bzImage"):
        k.find_kernel(t)



def test_bzimage_header_fields_sit_where_the_boot_protocol_puts_them(tmp_path):
    hdr = k.BzImageHeader
    assert (hdr.offset_of("setup_sects"), hdr.offset_of("header"), hdr.offset_of("version"),
            hdr.offset_of("kernel_version"), hdr.SIZE) == (0x1F1, 0x202, 0x206, 0x20E, 0x210)
    image = bytearray(make_bzimage("6.1.0-test-amd64 #1"))
    image[0x20E:0x210] = (0x800 - 0x200).to_bytes(2, "little")  # the pointer is the file offset less 0x200
    image[0x800:0x80D] = b"6.1.0-moved\0\0"
    path = tmp_path / "vmlinuz"
    path.write_bytes(bytes(image))
    assert k.bzimage_version(path) == "6.1.0-moved"
    path.write_bytes(bytes(image[:0x20F]))  # cut inside the setup header
    with pytest.raises(KernelError, match=r"vmlinuz is not a bzImage \(no 'HdrS' boot header at 0x202\); give the "
                                          r"vmlinuz file\.$"):
        k.bzimage_version(path)
    image[0x800] = 0
    path.write_bytes(bytes(image))
    with pytest.raises(KernelError, match="has no kernel version string in its boot header"):
        k.bzimage_version(path)

# -- config and preflight ------------------------------------------------------------------
def test_config_parse():
    cfg = KernelConfig.parse(CONFIG)
    assert cfg.get("AMD_MEM_ENCRYPT") == "y" and cfg.get("CONFIG_AMD_MEM_ENCRYPT") == "y"
    assert cfg.get("SEV_GUEST") == "m"
    assert cfg.get("EROFS_FS") == "n" and "EROFS_FS" in cfg
    assert cfg.get("NOT_THERE") == "n" and "NOT_THERE" not in cfg
    assert cfg.get("LOCALVERSION") == '""' and cfg.get("NR_CPUS") == "64"


def test_config_parse_refuses_garbage():
    with pytest.raises(KernelError, match="cfg:2: .* is not a kernel config line"):
        KernelConfig.parse("CONFIG_A=y\nthis is not config\n", where="cfg")


def test_preflight_statuses():
    report = k.preflight(KernelConfig.parse(CONFIG))
    assert report.ok
    status = {c.requirement.options: (c.status, c.option, c.module) for c in report.required}
    assert status[("AMD_MEM_ENCRYPT",)] == ("builtin", "AMD_MEM_ENCRYPT", None)
    assert status[("SEV_GUEST",)] == ("module", "SEV_GUEST", "sev-guest")
    assert status[("EROFS_FS", "SQUASHFS")] == ("builtin", "SQUASHFS", None)  # any of
    assert report.modules == ("sev-guest", "virtio_pci", "virtio_blk", "dm-mod", "dm-verity")
    optional = {c.requirement.options: c.status for c in report.optional}
    assert optional[("TSM_REPORTS",)] == "missing"
    assert any(line.startswith("optional absent: CONFIG_TSM_REPORTS missing") for line in report.lines())


def test_preflight_failures_name_every_missing_option():
    text = CONFIG.replace("CONFIG_AMD_MEM_ENCRYPT=y", "# CONFIG_AMD_MEM_ENCRYPT is not set") \
        .replace("CONFIG_DEVTMPFS=y", "CONFIG_DEVTMPFS=m").replace("CONFIG_SEV_GUEST=m\n", "")
    report = k.preflight(KernelConfig.parse(text))
    assert not report.ok
    assert {c.requirement.options[0]: c.status for c in report.failures} == {
        "AMD_MEM_ENCRYPT": "missing", "DEVTMPFS": "module-only", "SEV_GUEST": "missing"}
    with pytest.raises(k.KernelPreflightFailed) as e:
        report.raise_if_failed("linux-image-6.1.0-test-amd64")
    msg = str(e.value)
    assert msg.startswith("linux-image-6.1.0-test-amd64 cannot run this SEV-SNP guest: CONFIG_AMD_MEM_ENCRYPT missing")
    assert "CONFIG_DEVTMPFS=m but it must be built in" in msg and "CONFIG_SEV_GUEST missing" in msg
    assert e.value.report is report


def test_preflight_custom_sets_and_decompressor():
    cfg = KernelConfig.parse("CONFIG_RD_GZIP=y\nCONFIG_TSM_REPORTS=m\n")
    report = k.preflight(cfg, k.decompressor_requirement("gzip") + k.decompressor_requirement("xz"),
                         (Requirement(("TSM_REPORTS",), "configfs-tsm", modules=("tsm",)),))
    assert [c.status for c in report.required] == ["builtin", "missing"]
    assert report.modules == ("tsm",)
    assert k.decompressor_requirement("none") == ()


# -- modules -------------------------------------------------------------------------------
def test_modname():
    assert k.modname("kernel/drivers/md/dm-verity.ko.xz") == "dm_verity"
    assert k.modname("sev-guest") == k.modname("sev_guest") == "sev_guest"


def test_closure_dependencies_and_files(tree):
    c = k.module_closure(tree, REL, ["dm-verity", "virtio-blk"])
    assert [m.initrd_path for m in c.modules] == sorted(m.initrd_path for m in c.modules)
    assert set(c.paths) == {"kernel/drivers/md/dm-verity.ko", "kernel/drivers/md/dm-mod.ko",
                            "kernel/drivers/md/dm-bufio.ko", "kernel/lib/reed_solomon/reed_solomon.ko",
                            "kernel/drivers/block/virtio_blk.ko", "kernel/drivers/virtio/virtio.ko",
                            "kernel/drivers/virtio/virtio_ring.ko"}
    assert c.requested == (("dm-verity", ("dm_verity",)), ("virtio-blk", ("virtio_blk",)))
    dep = dict(line.split(":", 1) for line in c.modules_dep().decode().splitlines())
    assert dep["kernel/drivers/md/dm-mod.ko"] == ""
    assert dep["kernel/drivers/md/dm-verity.ko"].split() == [
        "kernel/lib/reed_solomon/reed_solomon.ko", "kernel/drivers/md/dm-bufio.ko", "kernel/drivers/md/dm-mod.ko"]
    # busybox modprobe loads the list reversed, then the module: every dependency first
    for mod, deps in dep.items():
        order = list(reversed(deps.split())) + [mod]
        for i, m in enumerate(order):
            name = k.modname(m)
            assert all(k.modname(d) in {k.modname(x) for x in order[:i]}
                       for d in c.tree.module(name).depends)
    files = dict(c.files())
    assert f"lib/modules/{REL}/kernel/drivers/md/dm-verity.ko" in files
    assert b"alias virtio:d00000002v* virtio_blk\n" in c.modules_alias()


def test_closure_aliases_softdeps_and_compressed_modules(tree):
    c = k.module_closure(tree, REL, ["fs-erofs"])
    assert c.requested == (("fs-erofs", ("erofs",)),)
    # the softdep crc32c is an alias of two modules: both carried, neither a hard dependency
    assert set(c.paths) == {"kernel/fs/erofs/erofs.ko.xz", "kernel/lib/libcrc32c.ko",
                            "kernel/crypto/crc32c_generic.ko", "kernel/arch/x86/crypto/crc32c-intel.ko"}
    dep = c.modules_dep().decode()
    assert "kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko\n" in dep  # stored decompressed, as .ko
    assert "kernel/lib/libcrc32c.ko:\n" in dep
    assert "alias crypto-crc32c crc32c_generic\nalias crypto-crc32c crc32c_intel\n" in c.modules_alias().decode()
    files = dict(c.files())
    erofs = files[f"lib/modules/{REL}/kernel/fs/erofs/erofs.ko"]
    assert erofs.startswith(b"\x7fELF") and b"name=erofs\0" in erofs


@pytest.mark.parametrize("suffix", [".ko.gz", ".ko.zst"])
def test_gzip_and_zstd_modules(tmp_path, suffix):
    import gzip

    from .stepfakes import make_module

    t = make_kernel_tree(tmp_path / "pkg", REL)
    raw = make_module("foo", aliases=["fs-foo"])
    if suffix == ".ko.gz":
        packed = gzip.compress(raw, mtime=0)
    else:
        zstd = require("zstd", "zstd")
        packed = subprocess.run([zstd, "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    (t / "lib/modules" / REL / f"foo{suffix}").write_bytes(packed)
    c = k.module_closure(t, REL, ["fs-foo"])
    assert c.paths == [f"foo{suffix}"]
    assert c.files() == [(f"lib/modules/{REL}/foo.ko", raw)]
    (t / "lib/modules" / REL / f"foo{suffix}").write_bytes(b"garbage")
    with pytest.raises(ModuleError, match="is not valid"):
        k.module_closure(t, REL, ["foo"]).files()


def test_closure_builtin_and_missing(tree):
    c = k.module_closure(tree, REL, ["squashfs"])
    assert c.builtin == ("squashfs",) and c.paths == [] and c.modules_dep() == b""
    with pytest.raises(ModuleError, match="no module or alias 'nosuch'.*not built in"):
        k.module_closure(tree, REL, ["nosuch"])
    with pytest.raises(ModuleError, match="empty"):
        k.module_closure(tree, REL, [""])


def test_closure_missing_dependency_and_cycle(tmp_path):
    t = make_kernel_tree(tmp_path / "a", REL, modules={"kernel/a.ko": {"depends": ["gone"]}})
    with pytest.raises(ModuleError, match="kernel/a.ko depends on gone, which kernel .* neither ships nor builds in"):
        k.module_closure(t, REL, ["a"])
    t = make_kernel_tree(tmp_path / "b", REL, modules={"kernel/a.ko": {"depends": ["b"]},
                                                       "kernel/b.ko": {"depends": ["a"]}})
    with pytest.raises(ModuleError, match="cycle"):
        k.module_closure(t, REL, ["a"])


def test_module_name_mismatch_and_non_elf(tmp_path):
    t = make_kernel_tree(tmp_path / "a", REL, modules={"kernel/a.ko": {"name": "a", "declared_name": "zzz"}})
    with pytest.raises(ModuleError, match="declares the name 'zzz'"):
        k.module_closure(t, REL, ["a"])
    t = make_kernel_tree(tmp_path / "b", REL)
    (t / "lib/modules" / REL / "kernel").mkdir()
    (t / "lib/modules" / REL / "kernel/x.ko").write_bytes(b"not elf")
    with pytest.raises(ModuleError, match="not an ELF file"):
        k.module_closure(t, REL, ["x"])


def test_modinfo_section_headers_read_as_pyelftools_reads_them():
    import io

    from elftools.elf.elffile import ELFFile

    from .stepfakes import make_module
    data = make_module("sev-guest", depends=["tsm"], aliases=["platform:sev-guest"])
    section = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
    assert k._modinfo_section(data) == section.data() != b""
    assert (k.Elf64Header.offset_of("e_shoff"), k.Elf64Header.offset_of("e_shstrndx"),
            k.Elf64SectionHeader.offset_of("sh_offset"), k.Elf64SectionHeader.offset_of("sh_size")) == \
        (0x28, 0x3E, 0x18, 0x20)
    assert k.modinfo(data, where="module sev-guest.ko")["alias"] == ["platform:sev-guest"]
    for cut in (0x30, len(data) - 1):
        with pytest.raises(ModuleError, match=r"^module x.ko is a damaged ELF file \(section header table out of "
                                              r"range\); fetch the kernel package again\.$"):
            k.modinfo(data[:cut], where="module x.ko")


def test_closure_output_does_not_depend_on_request_order(tree):
    a = k.module_closure(tree, REL, ["dm-verity", "virtio_blk", "fs-erofs"])
    b = k.module_closure(tree, REL, ["fs-erofs", "virtio_blk", "dm-verity"])
    assert a.modules_dep() == b.modules_dep() and a.modules_alias() == b.modules_alias()
    assert a.files() == b.files()


# -- the real Debian kernels ---------------------------------------------------------------
def check_against_depmod(c: k.ModuleClosure, img: k.KernelImage, tmp_path: Path) -> None:
    """kmod's depmod is the reference: same dependencies and aliases for every carried module."""
    depmod = require("depmod", "kmod")
    base = tmp_path / "depmod"
    shutil.copytree(img.modules_dir, base / "lib/modules" / img.release, symlinks=True)
    subprocess.run([depmod, "-b", str(base), img.release], check=True, capture_output=True)
    ref_dir = base / "lib/modules" / img.release

    def strip(path: str) -> str:  # depmod names the shipped (maybe compressed) file; we store .ko
        return path.rsplit(".ko", 1)[0] + ".ko"

    ref_dep = {strip(a): [strip(d) for d in b.split()] for a, b in
               (line.split(":", 1) for line in (ref_dir / "modules.dep").read_text().splitlines())}
    ours = dict(line.split(":", 1) for line in c.modules_dep().decode().splitlines())
    for path, deps in ours.items():
        assert sorted(deps.split()) == sorted(ref_dep[path]), path
    carried = {m.name for m in c.modules}
    ref_alias = {line for line in (ref_dir / "modules.alias").read_text().splitlines()
                 if line.startswith("alias ") and line.split()[-1] in carried}
    assert set(c.modules_alias().decode().splitlines()) == ref_alias


@pytest.mark.network
def test_real_bookworm_kernel(tmp_path):
    from tests import realinputs

    tree = realinputs.kernel_tree("bookworm")
    img = k.find_kernel(tree)
    assert img.release.endswith("-amd64") and img.bzimage.stat().st_size > 5_000_000
    report = k.preflight(KernelConfig.load(img.config), k.REQUIRED + k.decompressor_requirement("gzip"))
    assert report.ok, report.lines()
    # Debian 6.1: the SEV guest pieces are modules, so the initrd must carry them
    assert report.modules == ("sev-guest", "virtio_pci", "virtio_blk", "dm-mod", "dm-verity", "erofs")
    # Debian 6.1 ships uncompressed modules and no modules.dep (depmod runs in postinst)
    assert list(img.modules_dir.rglob("*.ko.*")) == []
    assert not (img.modules_dir / "modules.dep").exists()
    c = k.module_closure(tree, img.release, list(report.modules))
    assert "kernel/drivers/virt/coco/sev-guest/sev-guest.ko" in c.paths
    check_against_depmod(c, img, tmp_path)


@pytest.mark.network
def test_real_trixie_kernel_compressed_modules(tmp_path):
    """trixie's 6.12: modules are .ko.xz under /usr/lib/modules; TSM_REPORTS appears."""
    from tests import realinputs

    tree = realinputs.kernel_tree("trixie")
    img = k.find_kernel(tree)
    assert img.modules_dir.parent.parent == tree / "usr/lib"
    report = k.preflight(KernelConfig.load(img.config), k.REQUIRED + k.decompressor_requirement("gzip"))
    assert report.ok, report.lines()
    assert "tsm" in report.modules  # CONFIG_TSM_REPORTS=m, reported by the optional set
    c = k.module_closure(tree, img.release, list(report.modules))
    assert c.paths and all(p.endswith(".ko.xz") for p in c.paths)
    for path, data in c.files():
        assert path.endswith(".ko") and data.startswith(b"\x7fELF"), path
    check_against_depmod(c, img, tmp_path)


def test_network_requirement_names_the_option_and_the_fix():
    (req,) = k.network_requirement()
    assert req.options == ("VIRTIO_NET",) and req.modules == ("virtio_net",) and not req.builtin
    assert req not in k.REQUIRED  # only recipes with network need it
    with_module = k.preflight(KernelConfig.parse("CONFIG_VIRTIO_NET=m\n"), k.network_requirement(), ())
    assert with_module.ok and with_module.modules == ("virtio_net",)
    assert k.preflight(KernelConfig.parse("CONFIG_VIRTIO_NET=y\n"), k.network_requirement(), ()).modules == ()
    report = k.preflight(KernelConfig.parse("# CONFIG_VIRTIO_NET is not set\n"), k.network_requirement(), ())
    with pytest.raises(k.KernelPreflightFailed) as e:
        report.raise_if_failed("linux-image-test")
    assert str(e.value) == ("linux-image-test cannot run this SEV-SNP guest: CONFIG_VIRTIO_NET missing (the guest's "
                            "network device (virtio-net), for a recipe with network; it must be =y or =m); choose a "
                            "kernel package built with these options.")


def test_missing_builtin_option_says_it_must_be_y():
    report = k.preflight(KernelConfig.parse(""), (Requirement(("DEVTMPFS",), "/dev", builtin=True),), ())
    assert report.failures[0].describe() == "CONFIG_DEVTMPFS missing (/dev; it must be =y)"
