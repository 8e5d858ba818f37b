"""The attestation agent's tree (builder.steps.agent) and the cpio builder's tree adder it goes through."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import blindbox
import measure
from builder.errors import InputDigestMismatch
from builder.lock import Lock, LockedInput
from builder.steps import cpio
from builder.steps.agent import DROPPED, AgentError, assemble_agent, source_files
from builder.steps.cpio import CpioError

from .ocifakes import d, f, sym
from .test_rootfs_assemble import deb

EPOCH = 1700000000
PYTHON = [d("./usr"), d("./usr/bin"), f("./usr/bin/python3.11", "py", 0o755), d("./usr/share"),
          d("./usr/share/doc"), f("./usr/share/doc/python3.11/copyright", "c"), f("./usr/share/man/man1/p.1", "m"),
          f("./usr/share/locale/de/x.mo", "l"), f("./usr/share/info/x.info", "i"), f("./usr/share/keep", "k"),
          sym("./usr/bin/python3", "/usr/bin/python3.11")]
OPENSSL = [d("./usr"), d("./usr/bin"), f("./usr/bin/openssl", "o", 0o755), f("./usr/share/doc/openssl/x", "d")]


def pins(tmp_path: Path, contents: dict) -> tuple[Lock, dict[str, Path]]:
    inputs, entries = {}, []
    for name, members in sorted(contents.items()):
        path = deb(tmp_path / f"{name}.deb", name, members)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        inputs[f"agent:{name}"] = path
        entries.append(LockedInput(name=f"agent:{name}", kind="debian", wants={}, sha256=sha,
                                   size=path.stat().st_size, origin="o", version="1.0-1",
                                   debian={"name": name, "suite": "bookworm"}))
    return Lock(recipe="t.yaml", inputs=tuple(entries)), inputs


def test_the_tree_has_the_packages_without_docs_the_agent_code_and_mount_points(tmp_path):
    lock, inputs = pins(tmp_path, {"python3.11-minimal": PYTHON, "openssl": OPENSSL})
    tree = assemble_agent(lock, inputs, tmp_path / "agent", epoch=EPOCH)
    root = tree.root
    assert [(p.name, p.version) for p in tree.packages] == [("openssl", "1.0-1"), ("python3.11-minimal", "1.0-1")]
    assert (root / "usr/bin/python3.11").read_text() == "py" and os.readlink(root / "usr/bin/python3") == \
        "/usr/bin/python3.11"
    assert (root / "usr/share/keep").exists()
    assert not any((root / x).exists() for x in DROPPED)
    for guest, src in source_files():
        assert (root / guest.lstrip("/")).read_bytes() == src.read_bytes(), guest
    assert (root / "opt/blindbox/agent.py").read_bytes() == \
        (Path(blindbox.__file__).parent / "agent" / "agent.py").read_bytes()
    assert (root / "opt/blindbox/measure/attested_tls.py").exists() and (root / "opt/blindbox/blindbox/__init__.py")
    assert "/opt/blindbox/measure/__init__.py" in tree.sources
    assert {(d, oct(os.lstat(root / d).st_mode & 0o7777)) for d in ("proc", "sys", "dev", "tmp", "run")} == \
        {("proc", "0o755"), ("sys", "0o755"), ("dev", "0o755"), ("tmp", "0o1777"), ("run", "0o755")}
    assert all(os.lstat(os.path.join(dp, n)).st_mtime == EPOCH
               for dp, dns, fns in os.walk(root) for n in dns + fns)


def test_the_agents_code_is_this_blindboxs_source_files():
    files = dict(source_files())
    assert files["/opt/blindbox/agent.py"] == Path(blindbox.__file__).parent / "agent" / "agent.py"
    assert files["/opt/blindbox/measure/layout.py"] == Path(measure.__file__).parent / "layout.py"
    assert not any("__pycache__" in g or not g.endswith(".py") for g in files)
    assert list(files) == [g for g, _ in source_files()]      # a fixed order


def test_no_agent_code_is_refused(tmp_path):
    (tmp_path / "blindbox").mkdir()
    with pytest.raises(AgentError, match="this blindbox has no attestation agent"):
        source_files(tmp_path / "blindbox", tmp_path)


def test_a_package_that_is_not_the_pinned_one_is_refused_and_nothing_is_left(tmp_path):
    lock, inputs = pins(tmp_path, {"python3.11-minimal": PYTHON, "openssl": OPENSSL})
    inputs["agent:openssl"].write_bytes(inputs["agent:openssl"].read_bytes() + b"x")
    with pytest.raises(InputDigestMismatch, match="input 'agent:openssl' .* not the pinned"):
        assemble_agent(lock, inputs, tmp_path / "agent", epoch=EPOCH)
    assert not (tmp_path / "agent").exists()


def test_packages_without_python_are_refused(tmp_path):
    lock, inputs = pins(tmp_path, {"openssl": OPENSSL})
    with pytest.raises(AgentError, match="the agent's packages have no /usr/bin/python3.11"):
        assemble_agent(lock, inputs, tmp_path / "agent", epoch=EPOCH)
    assert not (tmp_path / "agent").exists()


def test_a_lock_without_agent_pins_is_refused(tmp_path):
    with pytest.raises(AgentError, match="pins no package of the attestation agent"):
        assemble_agent(Lock(recipe="t.yaml", inputs=()), {}, tmp_path / "agent", epoch=EPOCH)


# -- cpio: a tree, deterministically ------------------------------------------------------------

def _tree(root: Path, order: list[str]) -> None:
    root.mkdir()
    for name in order:
        if name == "dir":
            (root / "dir").mkdir(mode=0o750)
            os.chmod(root / "dir", 0o750)
        elif name == "file":
            (root / "file").write_bytes(b"data")
            os.chmod(root / "file", 0o640)
        elif name == "link":
            os.symlink("/usr/bin/x", root / "link")
        elif name == "hard":
            os.link(root / "file", root / "hard")
        elif name == "sub":
            (root / "dir" / "sub").write_bytes(b"s")


def test_add_tree_keeps_modes_and_links_and_not_the_order_of_creation(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a, ["dir", "file", "link", "hard", "sub"])
    _tree(b, ["file", "hard", "link", "dir", "sub"])
    out = []
    for root in (a, b):
        archive = cpio.Archive()
        archive.add_tree("agent", root)
        out.append(archive.to_bytes(mtime=EPOCH))
    assert out[0] == out[1]
    members = {m.name: m for m in cpio.parse(out[0])}
    assert oct(members["agent/dir"].mode) == "0o40750" and oct(members["agent/file"].mode) == "0o100640"
    assert members["agent/link"].data == b"/usr/bin/x" and members["agent/hard"].data == b"data"
    assert members["agent/hard"].nlink == 1 and members["agent/dir/sub"].data == b"s"
    assert all(m.uid == m.gid == 0 and m.mtime == EPOCH for m in members.values())


def test_add_tree_refuses_special_files(tmp_path):
    (tmp_path / "t").mkdir()
    os.mkfifo(tmp_path / "t" / "fifo")
    with pytest.raises(CpioError, match="fifo is neither a directory, a regular file nor a symlink"):
        cpio.Archive().add_tree("agent", tmp_path / "t")
