"""measure.record behaves as a frozen dataclass where the calculator relies on it; Guid as uuid's bytes_le."""

from __future__ import annotations

import dataclasses
import uuid
from typing import ClassVar

import pytest

from measure import record as rec
from measure.record import FrozenRecordError, field, fields, is_record, record, replace
from measure.spec import GUID_NAMES, Guid


@record
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    LIMIT: ClassVar[int] = 10


@dataclasses.dataclass(frozen=True)
class DPoint:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    notes: list[str] = dataclasses.field(default_factory=list)
    LIMIT: ClassVar[int] = 10


def test_construction_defaults_and_factories_match_dataclasses():
    for args, kwargs in [((1,), {}), ((1, 2), {}), ((), {"x": 3, "tags": ("a",)}), ((4,), {"y": 5})]:
        ours, theirs = Point(*args, **kwargs), DPoint(*args, **kwargs)
        assert [getattr(ours, f.name) for f in fields(ours)] == \
               [getattr(theirs, f.name) for f in dataclasses.fields(theirs)]
    a, b = Point(1), Point(1)
    assert a.notes == [] and a.notes is not b.notes  # a fresh object per instance
    assert [f.name for f in fields(Point)] == ["x", "y", "tags", "notes"]  # ClassVar is not a field
    assert Point.LIMIT == 10 and Point.y == 0


def test_equality_hash_and_repr():
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert Point(1) != DPoint(1)  # another class is never equal, as with dataclasses
    assert hash(Point(1, 2, ("a",), ())) == hash(Point(1, 2, ("a",), ()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unhashable"):
        hash(Point(1))  # a list field makes it unhashable, as it makes a frozen dataclass
    with pytest.raises(TypeError, match="unhashable"):
        hash(DPoint(1))
    assert repr(Point(1, 2)) == repr(DPoint(1, 2)).replace("DPoint", "Point")


def test_records_are_immutable():
    p = Point(1)
    with pytest.raises(FrozenRecordError, match="cannot assign to field 'x': Point is immutable; use replace"):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x  # type: ignore[misc]
    assert p.x == 1


def test_wrong_arguments_are_refused_like_dataclasses():
    with pytest.raises(TypeError, match=r"missing required argument: 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, x=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 4 positional arguments but 5 were given"):
        Point(1, 2, (), [], 5)  # type: ignore[call-arg]


def test_declaration_mistakes_are_refused():
    with pytest.raises(TypeError, match="mutable default"):
        @record
        class Shared:
            items: list[int] = []  # noqa: RUF012
    with pytest.raises(TypeError, match="field without a default follows 'a'"):
        @record
        class Order:
            a: int = 0
            b: int  # type: ignore[misc]
    with pytest.raises(TypeError, match="not both"):
        field(default=1, default_factory=int)


def test_replace_fields_metadata_inheritance_and_post_init():
    assert replace(Point(1, 2), y=5) == Point(1, 5)
    with pytest.raises(TypeError, match="has no field 'z'"):
        replace(Point(1), z=1)
    with pytest.raises(TypeError, match="is not a record"):
        fields(DPoint)
    assert is_record(Point) and is_record(Point(1)) and not is_record(DPoint)

    seen = []

    @record
    class Base:
        a: int = field(default=1, metadata={"unit": "bytes"})

    @record
    class Child(Base):
        b: int = 2

        def __post_init__(self) -> None:
            seen.append((self.a, self.b))

    assert [f.name for f in fields(Child)] == ["a", "b"] and fields(Child)[0].metadata == {"unit": "bytes"}
    assert Child(3, 4) == Child(a=3, b=4) and seen == [(3, 4), (3, 4)]
    assert rec.MISSING is not None and repr(rec.MISSING) == "MISSING"


def test_compare_and_repr_flags():
    @record
    class Noted:
        a: int
        cache: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    assert Noted(1, {"x": 1}) == Noted(1, {}) and repr(Noted(1)) == "test_compare_and_repr_flags.<locals>.Noted(a=1)"


@pytest.mark.parametrize("text", ["96b582de-1fb2-45f7-baea-a366c55a082d", "00f771de-1a7e-4fcb-890e-68c77e2fb44e",
                                  "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-fffffffffffe"])
def test_guid_is_uuid_bytes_le(text):
    g = Guid.parse(text)
    assert bytes(g) == uuid.UUID(text).bytes_le == g.bytes_le
    assert str(g) == str(uuid.UUID(text)) and f"{g}" == text
    with pytest.raises(ValueError, match="32 hex digits"):
        Guid.parse(text[:-2])


def test_every_named_guid_round_trips():
    for guid, name in GUID_NAMES.items():
        assert Guid.parse(str(guid)) == guid and name.endswith("_GUID")
