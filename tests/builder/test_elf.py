"""builder.steps.elf: shared-library closure inside unpacked package trees."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.steps import elf
from builder.steps.elf import ElfError, MissingLibrary
from tests.tools import require

from .stepfakes import EM_AARCH64, make_elf

INTERP = "/lib64/ld-linux-x86-64.so.2"


def put(root: Path, guest: str, data: bytes | None = None, *, link: str | None = None) -> Path:
    p = root / guest.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    if link is not None:
        os.symlink(link, p)
    else:
        p.write_bytes(data if data is not None else make_elf())
    return p


def libc_root(root: Path) -> Path:
    """A bookworm-like libc6 layout: real files in /lib/x86_64-linux-gnu, /lib64 link."""
    put(root, "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", make_elf())
    put(root, INTERP, link="/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    put(root, "/lib/x86_64-linux-gnu/libc.so.6.real", make_elf(needed=["ld-linux-x86-64.so.2"]))
    put(root, "/lib/x86_64-linux-gnu/libc.so.6", link="libc.so.6.real")
    return root


def closure(binaries, root):
    return {s.guest_path: s for s in elf.library_closure(binaries, root)}


def test_interpreter_and_transitive_libraries(tmp_path):
    root = libc_root(tmp_path / "root")
    put(root, "/usr/lib/x86_64-linux-gnu/libfoo.so.1", make_elf(needed=["libbar.so.2", "libc.so.6"]))
    put(root, "/lib/x86_64-linux-gnu/libbar.so.2", make_elf(needed=["libc.so.6"]))
    app = put(tmp_path, "/src/app", make_elf(interp=INTERP, needed=["libfoo.so.1", "libc.so.6"]))
    got = closure([(app, "/usr/bin/app")], root)
    assert sorted(got) == ["/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libbar.so.2",
                           "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2",
                           "/usr/lib/x86_64-linux-gnu/libfoo.so.1"]
    assert got["/lib/x86_64-linux-gnu/libc.so.6"].source == root / "lib/x86_64-linux-gnu/libc.so.6.real"
    assert got[INTERP].source == root / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert got["/lib/x86_64-linux-gnu/libbar.so.2"].needed_by == "/usr/lib/x86_64-linux-gnu/libfoo.so.1"
    assert got["/usr/lib/x86_64-linux-gnu/libfoo.so.1"].needed_by == "/usr/bin/app"


def test_static_binary_needs_nothing(tmp_path):
    root = libc_root(tmp_path / "root")
    assert elf.library_closure([(put(tmp_path, "/s", make_elf(static=True)), "/bin/s")], root) == []


def test_not_elf_refused(tmp_path):
    script = put(tmp_path, "/script", b"#!/bin/sh\necho\n")
    with pytest.raises(ElfError, match="binary /bin/script .* is not an ELF file; add scripts and data as plain"):
        elf.library_closure([(script, "/bin/script")], tmp_path)


def test_dynamic_segment_without_string_table_refused(tmp_path):
    # pyelftools asserts that a dynamic segment names its string table; the damaged file is
    # an ElfError (exit 2), not an AssertionError (a crash, exit 1)
    good = make_elf(interp=INTERP, needed=["libc.so.6"])
    at = good.rindex((5).to_bytes(8, "little"))  # the DT_STRTAB tag of the dynamic segment
    binary = put(tmp_path, "/bin/x", good[:at] + (0x6FFFFEF5).to_bytes(8, "little") + good[at + 8:])
    with pytest.raises(ElfError, match=r"cannot read binary /bin/x \(.*\) as ELF: its headers contradict each "
                                       r"other; the file is damaged") as e:
        elf.library_closure([(binary, "/bin/x")], tmp_path)
    assert e.value.exit_code == 2


def test_missing_library_names_binary_library_and_chain(tmp_path):
    root = libc_root(tmp_path / "root")
    put(root, "/lib/x86_64-linux-gnu/libfoo.so.1", make_elf(needed=["libgone.so.3"]))
    app = put(tmp_path, "/src/app", make_elf(interp=INTERP, needed=["libfoo.so.1"]))
    with pytest.raises(MissingLibrary) as e:
        elf.library_closure([(app, "/usr/bin/app")], root)
    msg = str(e.value)
    assert msg.startswith("binary /usr/bin/app needs libgone.so.3 (required by /usr/bin/app -> "
                          "/lib/x86_64-linux-gnu/libfoo.so.1)")
    assert "searched /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib, /usr/lib" in msg
    assert msg.endswith("add the Debian package that ships libgone.so.3.")
    assert (e.value.binary, e.value.library) == ("/usr/bin/app", "libgone.so.3")


def test_missing_interpreter(tmp_path):
    app = put(tmp_path, "/src/app", make_elf(interp=INTERP, needed=["libc.so.6"]))
    (tmp_path / "root").mkdir()
    with pytest.raises(MissingLibrary, match="needs the program interpreter /lib64/ld-linux-x86-64.so.2.*libc6"):
        elf.library_closure([(app, "/usr/bin/app")], tmp_path / "root")


def test_runpath_origin_applies_to_direct_needs_only(tmp_path):
    root = libc_root(tmp_path / "root")
    put(root, "/opt/app/lib/libapp.so", make_elf(needed=["libdep.so"]))
    put(root, "/opt/app/lib/libdep.so", make_elf())
    app = put(tmp_path, "/src/app", make_elf(interp=INTERP, needed=["libapp.so"], runpath="$ORIGIN/../lib"))
    # DT_RUNPATH is not inherited: libapp's own dependency is not looked up there (as ld.so does)
    with pytest.raises(MissingLibrary, match="libdep.so"):
        elf.library_closure([(app, "/opt/app/bin/app")], root)
    # DT_RPATH of the executable is inherited
    app2 = put(tmp_path, "/src/app2", make_elf(interp=INTERP, needed=["libapp.so"], rpath="${ORIGIN}/../lib"))
    got = closure([(app2, "/opt/app/bin/app")], root)
    assert {"/opt/app/lib/libapp.so", "/opt/app/lib/libdep.so"} <= set(got)
    # $ORIGIN follows the guest path, not the source path
    with pytest.raises(MissingLibrary, match="libapp.so"):
        elf.library_closure([(app2, "/usr/bin/app")], root)


def test_runpath_disables_rpath(tmp_path):
    root = libc_root(tmp_path / "root")
    put(root, "/opt/r/libx.so", make_elf())
    app = put(tmp_path, "/src/app", make_elf(interp=INTERP, needed=["libx.so"], rpath="/opt/r", runpath="/opt/none"))
    with pytest.raises(MissingLibrary, match="searched /opt/none, /lib/x86_64-linux-gnu"):
        elf.library_closure([(app, "/bin/app")], root)


def test_incompatible_candidate_skipped(tmp_path):
    root = libc_root(tmp_path / "root")
    put(root, "/lib/x86_64-linux-gnu/libfoo.so.1", make_elf(machine=EM_AARCH64))
    put(root, "/usr/lib/x86_64-linux-gnu/libfoo.so.1", make_elf())
    app = put(tmp_path, "/src/app", make_elf(interp=INTERP, needed=["libfoo.so.1"]))
    assert "/usr/lib/x86_64-linux-gnu/libfoo.so.1" in closure([(app, "/bin/app")], root)


def test_merged_usr_package_without_top_level_links(tmp_path):
    """trixie-style libc6: everything under /usr, the /lib64 link comes from another package."""
    root = tmp_path / "root"
    put(root, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", make_elf())
    put(root, "/usr/lib64/ld-linux-x86-64.so.2", link="../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    put(root, "/usr/lib/x86_64-linux-gnu/libc.so.6", make_elf())
    app = put(tmp_path, "/src/app", make_elf(interp=INTERP, needed=["libc.so.6"]))
    got = closure([(app, "/usr/bin/app")], root)
    assert sorted(got) == [INTERP, "/usr/lib/x86_64-linux-gnu/libc.so.6"]
    assert got[INTERP].source == root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def test_several_roots_act_as_one_tree(tmp_path):
    libc = libc_root(tmp_path / "libc6")
    other = tmp_path / "libfoo1"
    put(other, "/usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3", make_elf(needed=["libc.so.6"]))
    put(other, "/usr/lib/x86_64-linux-gnu/libfoo.so.1", link="libfoo.so.1.2.3")
    app = put(tmp_path, "/src/app", make_elf(interp=INTERP, needed=["libfoo.so.1"]))
    got = closure([(app, "/usr/bin/app")], [other, libc])
    assert got["/usr/lib/x86_64-linux-gnu/libfoo.so.1"].source == other / "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3"
    assert got["/lib/x86_64-linux-gnu/libc.so.6"].source.is_relative_to(libc)


def test_symlinks_never_leave_the_root(tmp_path):
    root = libc_root(tmp_path / "root")
    put(tmp_path, "/outside/libevil.so", make_elf())
    put(root, "/lib/x86_64-linux-gnu/libevil.so", link="../../../../outside/libevil.so")
    put(root, "/lib/x86_64-linux-gnu/libabs.so", link=str(tmp_path / "outside/libevil.so"))
    put(root, "/lib/x86_64-linux-gnu/libloop.so", link="libloop.so")
    for name in ("libevil.so", "libabs.so", "libloop.so"):
        assert elf.resolve_in_root(root, f"/lib/x86_64-linux-gnu/{name}") is None
        app = put(tmp_path, f"/src/{name}", make_elf(interp=INTERP, needed=[name]))
        with pytest.raises(MissingLibrary, match=name):
            elf.library_closure([(app, "/bin/app")], root)


def test_bad_root(tmp_path):
    with pytest.raises(ElfError, match="is not a directory"):
        elf.library_closure([], tmp_path / "nope")
    with pytest.raises(ElfError, match="no library root"):
        elf.library_closure([], [])


def test_matches_ldd_on_this_system():
    """Cross-check on the host's own merged-/usr system: the same sonames as glibc's ldd."""
    ldd = require("ldd", "libc-bin")
    # qemu-img has the longer closure; ls (coreutils, essential) is always there
    binary = next(Path(p) for p in ("/usr/bin/qemu-img", "/usr/bin/ls", "/bin/ls") if Path(p).is_file())
    assert elf.read_elf(binary, what="host binary").is_dynamic, f"{binary} is not dynamically linked"
    got = {Path(s.name).name for s in elf.library_closure([(binary, str(binary))], Path("/"))}
    out = subprocess.run([ldd, str(binary)], capture_output=True, text=True, check=True).stdout
    expected = {Path(line.split()[0]).name for line in out.splitlines() if line.strip() and "vdso" not in line}
    assert got == expected


@pytest.mark.network
def test_real_debian_binary_runs_from_its_closure_alone(tmp_path):
    """jq from bookworm (jq -> libjq1 -> libonig5, libc6): the closure, and nothing else, runs it."""
    from tests import realinputs

    archive = realinputs.archive()
    trees = [archive.unpack(archive.resolve(name, "bookworm")) for name in ("jq", "libjq1", "libonig5", "libc6")]
    jq = trees[0] / "usr/bin/jq"
    libs = elf.library_closure([(jq, "/usr/bin/jq")], trees)
    names = {Path(s.name).name for s in libs}
    assert {"libjq.so.1", "libonig.so.5", "libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2"} <= names
    assert INTERP in {s.guest_path for s in libs}
    # readelf from binutils would say the same; here the proof is running it in a chroot
    # that holds the binary and its closure only
    chroot = tmp_path / "chroot"
    put(chroot, "/usr/bin/jq", jq.read_bytes())
    (chroot / "usr/bin/jq").chmod(0o755)
    for s in libs:
        put(chroot, s.guest_path, s.source.read_bytes())
        (chroot / s.guest_path.lstrip("/")).chmod(0o755)
    if os.geteuid() != 0:
        # chroot(2) needs CAP_SYS_CHROOT: an unprivileged run cannot perform this check at all
        pytest.skip("running the closure in a chroot needs root")
    chroot_tool = require("chroot", "coreutils")
    proc = subprocess.run([chroot_tool, str(chroot), "/usr/bin/jq", "-n", "[1,2]|add"], capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        # root without CAP_SYS_CHROOT (a restricted container): the check cannot run here
        pytest.skip(f"chroot is not permitted here: {proc.stderr.strip()}")
    assert (proc.returncode, proc.stdout) == (0, "3\n"), proc.stderr
