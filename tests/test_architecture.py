"""The dependency rules between the parts (docs/architecture.md), checked both ways.

Statically: every import statement of every module, including imports inside functions,
``TYPE_CHECKING`` blocks and relative imports (resolved against the module's package), and
``importlib.import_module``/``__import__`` calls.  At run time: the modules a fresh
interpreter holds after computing one SNP digest through the calculator's public API.
Every module's docstring says what it must not depend on.  Each check is also run on a
synthetic breach, so a checker that sees nothing fails.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("measure", "builder", "blindbox")
FIRMWARE = ROOT / "tests" / "fixtures" / "vectors" / "sev-snp-measure" / "ovmf_AmdSev_suffix.bin"


@dataclass(frozen=True)
class Rule:
    """What the modules of one part may import: ``allow`` (an allow-list, when not None) minus ``deny``.

    Entries are module names; an entry covers the module and its submodules.  ``"stdlib"``
    stands for the standard library.
    """

    part: str
    why: str
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()


#: the part a module belongs to is the longest prefix listed here
RULES = {
    "measure": Rule("the calculator `measure`", "stays standard-library-only", allow=("stdlib", "measure")),
    "blindbox.audit": Rule(
        "the auditor `blindbox.audit`", "uses the calculator, never the builder or the command line",
        allow=("stdlib", "measure", "blindbox.files", "blindbox.audit", "cryptography")),
    "blindbox.files": Rule("`blindbox.files`", "is shared by every part",
                           allow=("stdlib", "measure.errors")),
    "blindbox": Rule("the `blindbox` namespace package", "is imported with each of its parts",
                     allow=("stdlib",)),
    "blindbox.agent": Rule("the attestation agent `blindbox.agent`",
                           "runs inside the guest with only the standard library and the calculator",
                           allow=("stdlib", "measure", "blindbox.agent")),
    "builder": Rule("the builder `builder`", "never depends on the command line",
                    deny=("blindbox.cli", "click")),
    "blindbox.cli": Rule("the command line `blindbox.cli`", "may import every part"),
    # inside the builder, the arrows of builder/sources/__init__.py: debian -> deb, cache; remote -> cache
    "builder.sources.cache": Rule("the content cache `builder.sources.cache`",
                                  "knows nothing of what is stored, nor of the command line",
                                  deny=("builder.sources", "blindbox.cli", "click")),
    "builder.sources.deb": Rule("the .deb reader `builder.sources.deb`",
                                "needs neither the cache, the network, apt nor the command line",
                                deny=("builder.sources", "blindbox.cli", "click")),
    "builder.sources.oci": Rule("the image reader `builder.sources.oci`",
                                "needs neither the cache, the network, apt nor the command line",
                                deny=("builder.sources", "blindbox.cli", "click")),
    "builder.sources.remote": Rule("the URL and local inputs `builder.sources.remote`",
                                   "need only the cache of builder.sources, never the command line",
                                   deny=("builder.sources.deb", "builder.sources.debian", "blindbox.cli", "click")),
    "builder.sources.debian": Rule("the Debian archive `builder.sources.debian`",
                                   "never depends on the URL inputs or the command line",
                                   deny=("builder.sources.remote", "builder.sources.snapshot", "builder.sources.vendor",
                                         "blindbox.cli", "click")),
    "builder.sources.snapshot": Rule("the snapshot archive `builder.sources.snapshot`",
                                     "needs only the cache and the URL fetcher, never apt or the command line",
                                     deny=("builder.sources.debian", "builder.sources.deb", "builder.sources.vendor",
                                           "blindbox.cli", "click")),
}


def covers(entry: str, module: str) -> bool:
    if entry == "stdlib":
        return module.split(".")[0] in sys.stdlib_module_names
    return module == entry or module.startswith(entry + ".")


def part_of(module: str) -> str | None:
    best = None
    for name in RULES:
        if covers(name, module) and (best is None or len(name) > len(best)):
            best = name
    return best


def module_name(path: Path, root: Path) -> tuple[str, str]:
    """(module, package) of a source file under ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imported_modules(source: str, filename: str, module: str, package: str,
                     is_module=lambda name: False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, wherever it sits.

    ``from A import b`` names ``A.b`` when ``is_module("A.b")``, else ``A``.  A relative
    import that leaves the top-level package is returned as ``<beyond top level>``.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".") if package else []
                if node.level - 1 >= len(up):
                    found.append((node.lineno, "<beyond top level>"))
                    continue
                base = ".".join(up[:len(up) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if alias.name != "*" and is_module(sub) else base))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                    found.append((node.lineno, arg.value))
                else:
                    found.append((node.lineno, "<dynamic import>"))
    return found


def violations(root: Path) -> list[str]:
    """Every import under ``root`` that its part's rule forbids, as ``file:line: sentence``."""
    def is_module(name: str) -> bool:
        rel = root.joinpath(*name.split("."))
        return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()

    out = []
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            module, package = module_name(path, root)
            part = part_of(module)
            assert part is not None, module
            rule = RULES[part]
            if part == "blindbox.cli":
                continue
            for line, target in imported_modules(path.read_text(encoding="utf-8"), str(path), module, package,
                                                 is_module):
                if target.startswith("<"):
                    bad = True
                else:
                    bad = ((rule.allow is not None and not any(covers(a, target) for a in rule.allow))
                           or any(covers(d, target) for d in rule.deny))
                if bad:
                    out.append(f"{path.relative_to(root).as_posix()}:{line}: imports {target}, but "
                               f"{rule.part} {rule.why} (docs/architecture.md)")
    return out


def test_every_module_belongs_to_a_part():
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            assert part_of(module_name(path, ROOT)[0]) is not None, path


def test_imports_follow_the_dependency_rules():
    found = violations(ROOT)
    assert not found, "\n".join(found)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for top in PACKAGES:
        (tmp_path / top).mkdir(exist_ok=True)
    return tmp_path


def test_checker_names_each_breach_with_file_and_line(tmp_path):
    root = _tree(tmp_path, {
        "measure/__init__.py": "from .snp import x\n",
        "measure/snp.py": """\
            import hashlib
            from . import gctx


            def late():
                import yaml
                from ..builder import pipeline
                return yaml, pipeline
            """,
        "measure/gctx.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cryptography import x509\n",
        "measure/dyn.py": "import importlib\nimportlib.import_module(name)\n",
        "builder/__init__.py": "",
        "builder/pipeline.py": "import yaml\nimport elftools\nfrom blindbox.cli import params\n",
        "builder/sources/__init__.py": "from .cache import x\nfrom .remote import y\n",
        "builder/sources/cache.py": "from ..errors import SourceError\nfrom .deb import extract_deb\n",
        "builder/sources/deb.py": "def f():\n    from builder.sources import cache\n",
        "builder/sources/remote.py": "from .cache import ContentCache\nfrom . import debian\n",
        "builder/sources/debian.py": "from .cache import ContentCache\nfrom .deb import f\nfrom .remote import g\n",
        "blindbox/__init__.py": "",
        "blindbox/files.py": "from measure.errors import InputError\nfrom measure import snp\n",
        "blindbox/audit/__init__.py": "",
        "blindbox/audit/verify.py": """\
            from cryptography import x509
            from measure import launch_digest
            from blindbox import files
            from ..files import write_atomic
            from . import report
            import click
            from builder.manifest import Manifest
            """,
        "blindbox/audit/report.py": "def f():\n    from ...blindbox.cli import main\n",
        "blindbox/cli/__init__.py": "import click\nimport yaml\nfrom builder import pipeline\n",
        "blindbox/agent/__init__.py": "",
        "blindbox/agent/server.py": "import ssl\nfrom measure.attested_tls import report_data\n"
                                    "from . import attesters\nfrom blindbox.audit import verify\n"
                                    "from cryptography import x509\n",
        "blindbox/agent/attesters.py": "from ..files import write_atomic\n",
    })
    found = sorted(v.split(", but")[0] for v in violations(root))
    assert found == sorted([
        "measure/snp.py:6: imports yaml",
        "measure/snp.py:7: imports <beyond top level>",
        "measure/gctx.py:3: imports cryptography",
        "measure/dyn.py:2: imports <dynamic import>",
        "builder/pipeline.py:3: imports blindbox.cli",
        "builder/sources/cache.py:2: imports builder.sources.deb",
        "builder/sources/deb.py:2: imports builder.sources.cache",
        "builder/sources/remote.py:2: imports builder.sources.debian",
        "builder/sources/debian.py:3: imports builder.sources.remote",
        "blindbox/files.py:2: imports measure.snp",
        "blindbox/audit/verify.py:6: imports click",
        "blindbox/audit/verify.py:7: imports builder.manifest",
        "blindbox/audit/report.py:2: imports <beyond top level>",
        "blindbox/agent/server.py:4: imports blindbox.audit.verify",
        "blindbox/agent/server.py:5: imports cryptography",
        "blindbox/agent/attesters.py:1: imports blindbox.files",
    ])
    assert any(v.startswith("measure/snp.py:6: imports yaml, but the calculator `measure` stays standard-library")
               for v in violations(root))


def test_relative_imports_resolve_against_the_package():
    src = "from . import a\nfrom .. import b\nfrom ..c import d\nfrom .e import f\n"
    as_module = imported_modules(src, "x", "blindbox.audit.verify", "blindbox.audit", lambda n: True)
    assert [m for _, m in as_module] == ["blindbox.audit.a", "blindbox.b", "blindbox.c.d", "blindbox.audit.e.f"]
    in_init = imported_modules("from . import a\nfrom .b import c\n", "x", "blindbox.audit", "blindbox.audit")
    assert [m for _, m in in_init] == ["blindbox.audit", "blindbox.audit.b"]


# -- at run time ---------------------------------------------------------------------------

FOREIGN = ("cryptography", "yaml", "click", "elftools", "builder", "blindbox")

DIGEST = """
import json, sys
from pathlib import Path
from measure import KernelHashes, MeasureRequest, SevMode, SnpLaunch, VmShape, launch_digest, profile
from measure import Firmware

firmware, kernel, initrd = (Path(p) for p in sys.argv[1:4])
request = MeasureRequest(mode=SevMode.SEV_SNP, ovmf=firmware, vcpus=2, vcpu_sig=0xA00F11,
                         kernel=kernel, initrd=initrd, append="console=ttyS0")
digest = launch_digest(request).digest.hex()
hashes = KernelHashes.from_files(kernel, initrd, "console=ttyS0")
shape = VmShape(2, vcpu_sig=0xA00F11, guest_features=0x1, profile=profile("qemu"))
again = SnpLaunch(Firmware.load(firmware)).measure(shape, hashes).digest.hex()
print(json.dumps({"digest": digest, "again": again, "modules": sorted(sys.modules)}))
"""


def foreign_modules_after(code: str, tmp_path: Path) -> tuple[str, list[str]]:
    """Run ``code`` in a fresh interpreter; (its digest, the loaded modules of FOREIGN packages)."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x4d\x5a kernel " * 4096)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"070701 initrd " * 1024)
    proc = subprocess.run([sys.executable, "-c", code, str(FIRMWARE), str(kernel), str(initrd)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["digest"] == result["again"]
    foreign = [m for m in result["modules"] if any(covers(f, m) for f in FOREIGN)]
    return result["digest"], foreign


def test_one_digest_loads_only_the_calculator_and_the_standard_library(tmp_path):
    digest, foreign = foreign_modules_after(DIGEST, tmp_path)
    assert len(digest) == 96 and digest != "0" * 96
    assert foreign == []


def test_runtime_check_sees_a_foreign_module(tmp_path):
    # the same run with an auditor and a third-party module loaded on the way must be caught
    breach = DIGEST.replace("from measure import Firmware", "import click\nimport blindbox.audit.errors\n"
                            "from measure import Firmware")
    _, foreign = foreign_modules_after(breach, tmp_path)
    assert "click" in foreign and "blindbox.audit.errors" in foreign and "blindbox" in foreign


def test_the_agent_loads_only_the_standard_library_and_the_calculator():
    # the guest has Python's standard library, `measure` and `blindbox.agent`, nothing else
    code = ("import json, sys\nimport blindbox.agent.__main__, blindbox.agent.server, blindbox.agent.attesters\n"
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout)
    assert "blindbox.agent.server" in modules
    foreign = [m for m in modules if any(covers(f, m) for f in FOREIGN)
               and m != "blindbox" and not covers("blindbox.agent", m)]
    assert foreign == []


# -- module docstrings ---------------------------------------------------------------------

#: a docstring states a dependency rule when it speaks of imports or dependencies ...
_SPEAKS_OF_DEPENDENCIES = re.compile(r"\b(imports?|depends?|needs)\b", re.I)
#: ... and of what is excluded
_EXCLUDES = re.compile(r"\b(never|not|no|only|nothing)\b", re.I)


def docstring_problems(root: Path) -> list[str]:
    """Modules without a docstring that says what they are for and what they must not depend on."""
    out = []
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), str(path))) or ""
            rel = path.relative_to(root).as_posix()
            if not doc.strip():
                out.append(f"{rel}: no module docstring")
            elif not (_SPEAKS_OF_DEPENDENCIES.search(doc) and _EXCLUDES.search(doc)):
                out.append(f"{rel}: the docstring does not say what the module must not depend on")
    return out


def test_every_module_says_what_it_is_for_and_what_it_must_not_depend_on():
    found = docstring_problems(ROOT)
    assert not found, "\n".join(found)


def test_docstring_check_sees_a_missing_rule(tmp_path):
    root = _tree(tmp_path, {
        "measure/a.py": '"""Parses things."""\n',
        "measure/b.py": "x = 1\n",
        "measure/c.py": '"""Parses things.\n\nIt imports only the standard library."""\n',
    })
    assert docstring_problems(root) == [
        "measure/a.py: the docstring does not say what the module must not depend on",
        "measure/b.py: no module docstring",
    ]


# -- the README's library imports keep working ---------------------------------------------

def readme_library_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^### As a library\n+```python\n(.*?)^```", text, re.M | re.S)
    assert found, "README.md has no python block under '### As a library'"
    return found.group(1)


def test_readme_library_example_runs_as_written(tmp_path):
    code = readme_library_example()
    assert "from measure import" in code
    (tmp_path / "OVMF.amdsev.fd").write_bytes(FIRMWARE.read_bytes())
    (tmp_path / "vmlinuz").write_bytes(b"\x4d\x5a kernel " * 4096)
    (tmp_path / "initrd.img").write_bytes(b"070701 initrd " * 1024)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert [line.split()[0] for line in lines[:-1]] == ["1", "2", "4", "8"] and lines[-1] == ""
    assert all(len(line.split()[1]) == 96 for line in lines[:-1])


def test_every_part_raises_the_readme_base_class():
    # "errors are subclasses of measure.errors.BlindboxError" (README), whichever part raises them
    from blindbox.audit import errors as audit_errors
    from builder import errors as builder_errors
    from measure.errors import BlindboxError, InternalError
    for module in (audit_errors, builder_errors):
        classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Exception)
                   and v.__module__ == module.__name__]
        assert classes and all(issubclass(c, BlindboxError) for c in classes), module.__name__
    assert not issubclass(InternalError, BlindboxError)  # a bug exits 1, not as bad input


#: standard modules that cost milliseconds to import and that the calculator does without
#: (measure.record instead of dataclasses, measure.spec.Guid instead of uuid, measure.named
#: instead of enum, which brings functools and collections; typing only for type checkers,
#: threading when a launch is measured); bench/targets.py times the import
COSTLY_AT_IMPORT = ("dataclasses", "inspect", "typing", "uuid", "platform", "threading", "ast", "pathlib", "re",
                    "enum", "functools", "collections")


def _loaded_by(module: str) -> tuple[list[str], list[str]]:
    """(modules loaded before, modules loaded by) importing ``module`` in a fresh interpreter."""
    code = (f"import sys\nbefore = set(sys.modules)\nimport {module}\nafter = set(sys.modules)\n"
            "import json\nprint(json.dumps([sorted(before), sorted(after - before)]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    before, loaded = json.loads(proc.stdout)
    return before, loaded


def test_importing_the_calculator_loads_no_costly_standard_module():
    before, loaded = _loaded_by("measure")
    assert not set(COSTLY_AT_IMPORT) & set(before)  # else this test could not see them
    assert "measure.snp" in loaded and "measure.vmsa" in loaded
    assert [m for m in loaded if m.split(".")[0] in COSTLY_AT_IMPORT] == []


#: what only a download needs (http.client brings ssl and email): a no-op build imports none of it
DOWNLOAD_ONLY = ("urllib.request", "http.client", "ssl", "email")


def test_a_build_that_downloads_nothing_imports_no_network_client():
    # builder.sources.remote: what reading a lock that names a snapshot archive imports
    before, loaded = _loaded_by("builder.pipeline, builder.sources.remote")
    assert "builder.sources.remote" in loaded and "builder.sources.debian" in loaded
    costly = [m for m in before + loaded if m in DOWNLOAD_ONLY or m.split(".")[0] == "email"]
    assert costly == []


#: what only making a bundle needs (tar and compression, child processes, ctypes, locale-dependent time
#: parsing, the .deb and OCI readers, the steps and the launch script): a build that finds its bundle
#: current reads the recipe and lock, hashes the bundle's files and loads none of it
BUILD_ONLY = ("tarfile", "subprocess", "ctypes", "difflib", "_strptime", "builder.sources.deb",
              "builder.sources.oci", "builder.rootfs_tree", "builder.steps", "builder.launch", "builder.repro")


def only_for_building(modules: list[str]) -> list[str]:
    return [m for m in modules if any(covers(b, m) for b in BUILD_ONLY + DOWNLOAD_ONLY)]

#: ``blindbox build`` in a fresh interpreter, then the modules it loaded (the line after the result)
NOOP_BUILD = """
import json, sys
{extra}
from blindbox.cli import main
rc = main(sys.argv[1:])
print()
print(json.dumps({{"rc": rc, "modules": sorted(sys.modules)}}))
"""


def _noop_build(tmp_path: Path, extra: str = "") -> tuple[dict, list[str]]:
    """Build a small recipe whose lock names a snapshot archive (with the test archive, in process), then
    run ``blindbox build --json`` on it again in a fresh interpreter: (its result, the modules it loaded)."""
    import os

    from builder.sources.snapshot import Snapshot
    from tests.builder.test_pipeline import locked, run

    env = locked(tmp_path, Snapshot.parse("https://snapshot.debian.org@20261117T000000Z"))
    assert not run(env).up_to_date
    proc = subprocess.run([sys.executable, "-c", NOOP_BUILD.format(extra=extra), "build", str(env.recipe.path),
                           "--out", str(env.out), "--json", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "BLINDBOX_CACHE": str(env.cache)})
    assert proc.returncode == 0, proc.stderr
    result, _, loaded = proc.stdout.rpartition("\n\n")
    status = json.loads(loaded)
    assert status["rc"] == 0, proc.stderr
    return json.loads(result), status["modules"]


def test_a_build_that_finds_its_bundle_current_loads_nothing_only_building_needs(tmp_path):
    result, modules = _noop_build(tmp_path)
    assert result["up_to_date"] and list(result["timings"]) == ["recipe", "current"]
    # it did read the recipe, the lock (with its snapshot archive) and the bundle
    assert {"yaml", "builder.pipeline", "builder.lock", "builder.sources.snapshot"} <= set(modules)
    assert only_for_building(modules) == []
    assert "click" not in modules     # the usual form of the command is parsed without it (blindbox.cli.build_core)


def test_the_current_build_check_sees_a_module_only_building_needs(tmp_path):
    _, modules = _noop_build(tmp_path, extra="import tarfile, builder.launch, http.client")
    assert {"tarfile", "builder.launch", "http.client"} <= set(only_for_building(modules))
