"""measure.named against enum, side by side: every operation, for every member.

Each class is declared twice from one list of members, once on a base of measure.named and
once on the enum base it stands in for, and every observable result must be the same:
results, types, messages of the exceptions.
"""

from __future__ import annotations

import copy
import enum
import json
import pickle
import warnings
from pathlib import Path

import pytest

import measure
from measure import spec, vmm
from measure.errors import LayoutError
from measure.gctx import PageInfo
from measure.named import Named, NamedFlag, NamedInt, NamedType

BASES = {"enum": (enum.Enum, Named), "int": (enum.IntEnum, NamedInt), "flag": (enum.IntFlag, NamedFlag)}

#: (kind, name, members) of classes shaped like the calculator's, and of the corners of enum
#: the calculator does not use yet but that a runtime class must not get silently wrong
DECLARED = [
    ("int", "Small", {"ONE": 1, "TWO": 2, "SIXTEEN": 0x10}),
    ("int", "Unsorted", {"C": 3, "A": 1, "B": 2, "ALSO_A": 1}),
    ("int", "WithZero", {"ZERO": 0, "BIG": 1 << 40, "NEGATIVE": -3}),
    ("enum", "Text", {"ALPHA": "alpha", "BETA": "b:eta", "GAMMA": "Gamma", "DELTA_ALIAS": "alpha"}),
    ("enum", "Mixed", {"NUM": 1, "TUPLE": (1, 2), "NONE": None}),
    ("flag", "Bits", {"A": 1, "B": 2, "C": 4, "E": 0x10, "HIGH": 1 << 15}),
    ("flag", "Aliased", {"X": 1, "Y": 2, "XY": 3, "NONE": 0, "Z": 8}),
    ("flag", "Unordered", {"C": 4, "A": 1, "B": 2}),
]


def declare(kind: str, name: str, members: dict[str, object]) -> tuple[type, type]:
    """The class as enum makes it, and as measure.named makes it."""
    real_base, named_base = BASES[kind]
    real = real_base(name, list(members.items()))
    named = NamedType(name, (named_base,), dict(members))
    return real, named


PAIRS = [declare(*d) for d in DECLARED]
IDS = [d[1] for d in DECLARED]


def outcome(fn, *args):
    """What ``fn(*args)`` gives: ('ok', value) or ('raises', exception type, message)."""
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - the exception is the result compared
        return ("raises", type(e), str(e))


def same(fn, real_args, named_args, describe=repr):
    """``fn`` gives the same on the enum objects ``real_args`` as on the named ones."""
    r, n = outcome(fn, *real_args), outcome(fn, *named_args)
    if r[0] == "ok" and n[0] == "ok":
        assert describe(n[1]) == describe(r[1])
    else:
        assert n == r


def shape(obj):
    """A member as data: class name, name, value, int value, str, repr (for comparing results)."""
    if isinstance(obj, (enum.Enum, Named)):
        return ("member", type(obj).__name__, obj.name, obj.value, str(obj), repr(obj))
    return ("other", type(obj).__name__, repr(obj))


def probe_values(real):
    values = [m.value for m in real.__members__.values()]
    extra: list[object] = [7, 0, -1, "7", None, 2.0, True, (1, 2), [1]]
    if issubclass(real, enum.IntFlag):
        extra += [0x20, 0x21, 0x3 | 1 << 40, -2, ~0x10, 6, 1 << 16]
    return values + extra


@pytest.mark.parametrize(("real", "named"), PAIRS, ids=IDS)
def test_same_members_in_the_same_order(real, named):
    assert [(m.name, m.value) for m in named] == [(m.name, m.value) for m in real]
    assert [(m.name, m.value) for m in reversed(named)] == [(m.name, m.value) for m in reversed(real)]
    assert len(named) == len(real)
    assert bool(named) is bool(real) is True
    assert {k: (v.name, v.value) for k, v in named.__members__.items()} == \
           {k: (v.name, v.value) for k, v in real.__members__.items()}
    assert list(named.__members__) == list(real.__members__)
    assert repr(named) == repr(real)
    with pytest.raises(TypeError):
        named.__members__["NEW"] = None  # type: ignore[index]


@pytest.mark.parametrize(("real", "named"), PAIRS, ids=IDS)
def test_each_member_behaves_as_enum(real, named):
    for key, r in real.__members__.items():
        n = named.__members__[key]
        assert n is getattr(named, key) and n is named[key]
        assert type(n) is named
        assert (n.name, n.value, type(n.value)) == (r.name, r.value, type(r.value))
        assert str(n) == str(r).replace(real.__qualname__, named.__qualname__)
        assert repr(n) == repr(r)
        assert f"{n}" == f"{r}"
        for fmt in ("", ">30", "<30", "^30"):
            assert format(n, fmt) == format(r, fmt)
        if isinstance(r, int):
            for fmt in ("#x", "#04x", "d", "b", "08x", "X", "+d"):
                assert format(n, fmt) == format(r, fmt)
            assert int(n) == int(r) and isinstance(n, int)
            assert json.dumps(n) == json.dumps(r) == json.dumps(r.value)
            assert (n < 5, n + 1, n * 2, n & 1, -n, abs(n)) == (r < 5, r + 1, r * 2, r & 1, -r, abs(r))
            assert type(n + 1) is type(r + 1) is int
        else:
            assert not isinstance(n, int)
            same(json.dumps, (r,), (n,))
            same(lambda x: x < x, (r,), (n,))
        assert hash(n) == hash(r)
        assert (n == r.value) == (r == r.value)
        assert (n != r.value) == (r != r.value)
        assert bool(n) == bool(r)
        assert {n: 1}[named(r.value)] == 1
        for r2 in real.__members__.values():
            n2 = named.__members__[r2.name]
            assert (n == n2, n is n2, n != n2) == (r == r2, r is r2, r != r2)
        assert (n in named) == (r in real)
        assert named(n) is n
        assert copy.copy(n) is n and copy.deepcopy(n) is n
        with pytest.raises(AttributeError) as caught:
            n.name = "X"  # type: ignore[misc]
        with pytest.raises(AttributeError) as expected:
            r.name = "X"  # type: ignore[misc]
        assert type(caught.value) is type(expected.value)


@pytest.mark.parametrize(("real", "named"), PAIRS, ids=IDS)
def test_lookup_by_value_and_by_name(real, named):
    for value in probe_values(real):
        same(lambda cls, v: cls(v), (real, value), (named, value), describe=shape)
    for key in [*real.__members__, "NOPE", "one", 1]:
        same(lambda cls, k: cls[k], (real, key), (named, key), describe=shape)


@pytest.mark.parametrize(("real", "named"), PAIRS, ids=IDS)
def test_in_on_the_class_and_reassignment(real, named):
    other_real, other_named = PAIRS[0] if real is not PAIRS[0][0] else PAIRS[1]
    for r_probe, n_probe in [(next(iter(real)), next(iter(named))), (next(iter(other_real)), next(iter(other_named)))]:
        assert (n_probe in named) == (r_probe in real)
    for value in (1, "alpha", None):
        with warnings.catch_warnings(record=True) as real_warned:
            warnings.simplefilter("always")
            r = outcome(lambda cls, v: v in cls, real, value)
        with warnings.catch_warnings(record=True) as named_warned:
            warnings.simplefilter("always")
            n = outcome(lambda cls, v: v in cls, named, value)
        # the one difference: the message names the metaclass, NamedType for EnumType
        assert n == (r if r[0] == "ok" else (r[0], r[1], r[2].replace("'EnumType'", "'NamedType'")))
        assert [(w.category, str(w.message)) for w in named_warned] == \
               [(w.category, str(w.message)) for w in real_warned]
    first = next(iter(real)).name
    same(setattr, (real, first, 5), (named, first, 5))
    same(delattr, (real, first), (named, first))
    assert getattr(named, first) is named[first]


def OR(x, y):
    return x | y


def AND(x, y):
    return x & y


def XOR(x, y):
    return x ^ y


@pytest.mark.parametrize(("real", "named"), [p for p, d in zip(PAIRS, DECLARED, strict=True) if d[0] == "flag"],
                         ids=[d[1] for d in DECLARED if d[0] == "flag"])
def test_flag_operations(real, named):
    values = sorted({0, 1, 2, 3, 5, 7, 0x10, 0x11, 0x20, 0x21, 0x8000, 0x8011, 1 << 40 | 1, -1, -2, -0x11,
                     *(m.value for m in real.__members__.values())})

    def both(value):
        return real(value), named(value)

    def described(x):
        if isinstance(x, (enum.Flag, NamedFlag)):
            return (type(x).__name__, x.name, int(x), x.value, type(x.value), str(x), repr(x), bool(x), len(x),
                    [shape(m) for m in x], format(x, "#x"), format(x, ""), hash(x), json.dumps(x))
        return shape(x)

    for a in values:
        ra, na = both(a)
        assert described(na) == described(ra)
        same(lambda x: ~x, (ra,), (na,), describe=described)
        same(lambda x: ~~x, (ra,), (na,), describe=described)
        for b in values:
            rb, nb = both(b)
            for op in (OR, AND, XOR):
                for real_args, named_args in [((ra, rb), (na, nb)), ((ra, b), (na, b)), ((a, rb), (a, nb))]:
                    same(op, real_args, named_args, describe=described)
            same(lambda x, y: y in x, (ra, rb), (na, nb))
            same(lambda x, cls: x in cls, (ra, real), (na, named))
        for junk in ("1", 1.0, None):
            same(OR, (ra, junk), (na, junk), describe=described)
            same(AND, (junk, ra), (junk, na), describe=described)
            same(lambda x, y: y in x, (ra, junk), (na, junk))


def test_named_classes_refuse_what_enum_refuses():
    with pytest.raises(TypeError, match="cannot extend"):
        NamedType("More", (PAIRS[0][1],), {"THREE": 3})
    with pytest.raises(TypeError, match="may not hide the attribute 'name'"):
        NamedType("Clash", (Named,), {"name": 1})


# ---------------------------------------------------------------------------------------
# the calculator's own classes, against the same class bodies made with enum

def as_type_checkers_see_it(module: str) -> dict[str, object]:
    """The namespace of ``measure.<module>`` executed with TYPE_CHECKING true: real enums."""
    path = Path(measure.__file__).parent / f"{module}.py"
    source = path.read_text()
    flipped = source.replace("\nTYPE_CHECKING = False", "\nTYPE_CHECKING = True", 1)
    assert flipped != source, f"measure/{module}.py no longer chooses its bases on TYPE_CHECKING"
    namespace: dict[str, object] = {"__name__": f"measure._{module}_as_enum", "__package__": "measure"}
    exec(compile(flipped, str(path), "exec"), namespace)  # noqa: S102 - our own source, bases flipped
    return namespace


SPEC_ENUMS = as_type_checkers_see_it("spec")
VMM_ENUMS = as_type_checkers_see_it("vmm")
PROJECT = [(SPEC_ENUMS["PageType"], spec.PageType), (SPEC_ENUMS["SectionType"], spec.SectionType),
           (SPEC_ENUMS["SevMode"], spec.SevMode), (SPEC_ENUMS["GuestFeatures"], spec.GuestFeatures),
           (VMM_ENUMS["VmmType"], vmm.VmmType)]
PROJECT_IDS = [named.__name__ for _, named in PROJECT]


def test_the_calculator_uses_named_classes_and_type_checkers_see_enums():
    for real, named in PROJECT:
        assert isinstance(real, enum.EnumMeta) and issubclass(real, enum.Enum)
        assert type(named) is NamedType and not issubclass(named, enum.Enum)
    assert issubclass(SPEC_ENUMS["GuestFeatures"], enum.IntFlag) and issubclass(spec.GuestFeatures, NamedFlag)
    assert issubclass(SPEC_ENUMS["PageType"], enum.IntEnum) and issubclass(spec.PageType, NamedInt)
    assert not issubclass(spec.SevMode, int) and not issubclass(vmm.VmmType, int)


@pytest.mark.parametrize(("real", "named"), PROJECT, ids=PROJECT_IDS)
def test_calculator_classes_behave_as_their_enums(real, named):
    test_same_members_in_the_same_order(real, named)
    test_each_member_behaves_as_enum(real, named)
    test_lookup_by_value_and_by_name(real, named)
    if issubclass(real, enum.IntFlag):
        test_flag_operations(real, named)


@pytest.mark.parametrize("text", ["sev", "SEV", "seves", "sev-es", "snp", "Sev-Snp", "snp:svsm", "sev-snp:svsm",
                                  "qemu", "QEMU", "ec2", "EC2", "gce", "Gce", "", "kvm", "snp "])
def test_parse_gives_the_same_member_or_the_same_error(text):
    for cls in ("SevMode", "VmmType"):
        real, named = dict(zip(PROJECT_IDS, PROJECT, strict=True))[cls]
        same(lambda c, t: c.parse(t), (real, text), (named, text), describe=lambda m: (m.name, m.value))


def test_an_unknown_page_or_section_type_is_named_with_every_known_one():
    page = PageInfo(page_type=spec.PageType.VMSA).to_bytes()
    bad = page[:0x62] + b"\x09" + page[0x63:]
    with pytest.raises(LayoutError) as caught:
        PageInfo.from_bytes(bad)
    assert str(caught.value) == ("PageInfo.page_type at offset 0x62 has unknown value 0x9; known: NORMAL=0x1, "
                                 "VMSA=0x2, ZERO=0x3, UNMEASURED=0x4, SECRETS=0x5, CPUID=0x6.")
    assert PageInfo.from_bytes(page).page_type is spec.PageType.VMSA


def test_what_the_calculator_prints_from_its_constants():
    G = spec.GuestFeatures
    assert f"{G.SNP_ACTIVE | 0x20:#x}" == "0x21" and f"{5 | G.SNP_ACTIVE:#x}" == "0x5"
    assert not 0x20 & G.SNP_ACTIVE and (0x21 & G.SNP_ACTIVE) is G.SNP_ACTIVE
    assert [f.name for f in G if 0x4821 & f.value] == ["SNP_ACTIVE", "DEBUG_SWAP", "VMSA_REG_PROT"]
    assert 0x4821 & ~sum(f.value for f in G) == 0x800
    assert json.dumps({"type": spec.SectionType.CPUID, "page": spec.PageType.ZERO}) == '{"type": 3, "page": 3}'
    assert f"{spec.SevMode.SEV_SNP.value} {vmm.VmmType.EC2.value} {spec.SectionType.SVSM_CAA.name}" == \
           "snp ec2 SVSM_CAA"
    assert vmm.profile_for(vmm.VmmType.GCE).sec_mem_page_type is spec.PageType.UNMEASURED
    assert "SNP_SECRETS" in spec.SectionType.__members__ and "SECRETS" not in spec.SectionType.__members__
    assert pickle.loads(pickle.dumps(spec.GuestFeatures(0x21))) == 0x21
    assert all(pickle.loads(pickle.dumps(m)) is m for _, named in PROJECT for m in named)
