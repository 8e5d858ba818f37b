"""measure/bzimage.py: the setup header of the kernel the calculator measures, and its release."""

from __future__ import annotations

import pytest

from measure.bzimage import BzImageError, BzImageHeader, bzimage_version, kernel_release
from measure.errors import InputError


def _image(version: bytes, at: int = 0x400) -> bytearray:
    """The smallest bzImage the reader accepts: 'HdrS' and a version string at ``at``."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = (at - 0x200).to_bytes(2, "little")
    data[at:at + len(version) + 1] = version + b"\0"
    return data


def test_header_fields_sit_where_the_boot_protocol_puts_them():
    assert (BzImageHeader.offset_of("setup_sects"), BzImageHeader.offset_of("header"),
            BzImageHeader.offset_of("version"), BzImageHeader.offset_of("kernel_version"),
            BzImageHeader.SIZE) == (0x1F1, 0x202, 0x206, 0x20E, 0x210)


def test_the_version_string_is_found_through_the_header_pointer(tmp_path):
    path = tmp_path / "vmlinuz"
    path.write_bytes(bytes(_image(b"6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP", at=0x900)))
    version = bzimage_version(path)
    assert version == "6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP"
    assert kernel_release(version) == "6.1.0-28-amd64"


def test_a_release_is_the_first_word_of_the_version():
    assert kernel_release("6.12.9-amd64") == "6.12.9-amd64"
    assert kernel_release("6.1.0-test #1 SMP") == "6.1.0-test"


@pytest.mark.parametrize("data, message", [
    (bytes(_image(b"6.1.0")[:0x20F]), "vmlinuz is not a bzImage (no 'HdrS' boot header at 0x202); give the "
                                      "vmlinuz file."),
    (b"MZ" + bytes(4000), "vmlinuz is not a bzImage (no 'HdrS' boot header at 0x202)"),
    (bytes(_image(b"")), "vmlinuz has no kernel version string in its boot header."),
], ids=["cut_in_header", "no_magic", "empty_version"])
def test_what_is_not_a_bzimage_is_bad_input(tmp_path, data, message):
    path = tmp_path / "vmlinuz"
    path.write_bytes(data)
    with pytest.raises(BzImageError) as e:
        bzimage_version(path)
    assert message in str(e.value) and isinstance(e.value, InputError) and e.value.exit_code == 2


def test_an_unreadable_kernel_is_bad_input(tmp_path):
    with pytest.raises(BzImageError, match=r"cannot read the kernel image .*nope: No such file or directory\."):
        bzimage_version(tmp_path / "nope")
