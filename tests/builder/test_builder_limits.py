"""Kernel modules, initrd files and firmware volumes are read and decompressed within limits.

Decompression is bounded by the output size, so a module that inflates to gigabytes is
refused after MAX_MODULE_BYTES + 1 bytes; the limits are lowered here so the hostile
inputs stay small (docs/limits.md has the real values).
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess

import pytest

from builder import boot
from builder.steps import initrd, kernel
from builder.steps.initrd import InitrdError
from builder.steps.kernel import ModuleError, read_module

LIMIT = 1 << 20
ELF = b"\x7fELF" + bytes(LIMIT + 1)  # one byte over the lowered limit once decompressed


def _compressed(tmp_path, compression, data):
    path = tmp_path / f"m.ko.{compression or 'raw'}"
    if compression == "xz":
        path.write_bytes(lzma.compress(data))
    elif compression == "gz":
        path.write_bytes(gzip.compress(data))
    elif compression == "zst":
        raw = tmp_path / "raw"
        raw.write_bytes(data)
        subprocess.run(["zstd", "-q", "-f", str(raw), "-o", str(path)], check=True)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("compression", [None, "xz", "gz", "zst"])
def test_module_decompressing_beyond_the_limit(compression, tmp_path, monkeypatch):
    if compression == "zst":
        assert shutil.which("zstd"), "scripts/setup installs zstd"
    monkeypatch.setattr(kernel, "MAX_MODULE_BYTES", LIMIT)
    path = _compressed(tmp_path, compression, ELF)
    assert path.stat().st_size < LIMIT or compression is None
    with pytest.raises(ModuleError, match=f"the kernel module {path} is larger than 1,048,576 bytes"):
        read_module(path, compression)
    (tmp_path / "small").mkdir()
    small = _compressed(tmp_path / "small", compression, ELF[:LIMIT])
    assert read_module(small, compression) == ELF[:LIMIT]


def test_truncated_xz_module_is_refused(tmp_path):
    path = tmp_path / "t.ko.xz"
    path.write_bytes(lzma.compress(ELF)[:200])
    with pytest.raises(ModuleError, match="is not valid xz data"):
        read_module(path, "xz")


def test_initrd_file_over_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(initrd, "MAX_INITRD_FILE_BYTES", LIMIT)
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(LIMIT + 1)
    with pytest.raises(Exception, match=f"the file for /big file '{path}' is larger than 1,048,576 bytes"):
        initrd._read(path, "file for /big")
    path.write_bytes(b"x")
    assert initrd._read(path, "file for /big") == b"x"
    with pytest.raises(InitrdError, match="is not a regular file"):
        initrd._read("/dev/zero", "file for /big")


def test_firmware_volume_decompression_is_bounded(monkeypatch):
    monkeypatch.setattr(boot, "MAX_FIRMWARE_VOLUME_BYTES", LIMIT)
    body = lzma.compress(bytes(4 * LIMIT), format=lzma.FORMAT_ALONE)
    offset = 24
    size = 4 + 16 + 4 + len(body)
    section = size.to_bytes(3, "little") + bytes([boot._EFI_SECTION_GUID_DEFINED]) + boot._LZMA_SECTION_GUID + \
        offset.to_bytes(2, "little") + bytes(2) + body
    volumes = list(boot._firmware_volumes(bytes(64) + section))
    assert len(volumes) == 2 and len(volumes[1]) == LIMIT


def test_boot_method_of_an_endless_firmware():
    with pytest.raises(Exception, match="the firmware file '/dev/zero' is larger than 67,108,864 bytes"):
        boot.boot_method("/dev/zero")


def test_kernel_config_over_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel, "MAX_KERNEL_TEXT_BYTES", LIMIT)
    path = tmp_path / "config-6.1.0-test-amd64"
    path.write_bytes(b"CONFIG_X=y\n" * (LIMIT // 11 + 1))
    with pytest.raises(Exception, match=f"the kernel config file '{path}' is larger than 1,048,576 bytes"):
        kernel.KernelConfig.load(path)
    path.write_bytes(b"CONFIG_X=y\n")
    assert kernel.KernelConfig.load(path).values == {"X": "y"}
