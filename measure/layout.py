"""Declare a little-endian binary structure once, as a frozen record (:mod:`measure.record`).

This is the only module that touches :mod:`struct`.  A structure is written as::

    @layout.struct(size=0x10, spec="Linux svm.h, struct vmcb_seg")
    @record
    class Segment(layout.Struct):
        selector: int = layout.u16(0x0)
        attrib:   int = layout.u16(0x2)
        limit:    int = layout.u32(0x4)
        base:     int = layout.u64(0x8)

On the first use of the class (or :func:`check`) the decorator's layout is checked: fields do not
overlap and fit in ``size``;
every byte not covered by a field is *reserved*: written as zero, and rejected with a
:class:`~measure.errors.LayoutError` naming the offset when it is nonzero on parsing.
The class gains ``SIZE``, ``from_bytes()``, ``to_bytes()`` and ``offset_of()``; it derives
from :class:`Struct`, which declares them for type checkers.
Unknown field names are impossible by construction: the record constructor rejects
them (a misspelled ``ctypes`` keyword silently sets nothing).

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

import struct as _struct

from .errors import LayoutError
from .record import field, fields, is_record

TYPE_CHECKING = False  # importing typing costs ~2 ms (bench/targets.py); type checkers read the block
if TYPE_CHECKING:
    import enum
    from collections.abc import Callable
    from typing import Any, ClassVar, Self, TypeVar

_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class _Spec:
    """Where a field lies and how it is read: kind is "int", "raw", "text" or "nested"."""

    __slots__ = ("enum", "kind", "nested", "offset", "size")

    def __init__(self, offset: int, size: int, kind: str, enum: type[enum.IntEnum] | None = None,
                 nested: type[Struct] | None = None) -> None:
        self.offset = offset
        self.size = size
        self.kind = kind
        self.enum = enum
        self.nested = nested


class Struct:
    """Base of every ``@struct`` class: declares what the decorator adds."""

    SIZE: ClassVar[int]
    SPEC: ClassVar[str]

    if TYPE_CHECKING:
        def to_bytes(self) -> bytes: ...

        @classmethod
        def from_bytes(cls, data: bytes, *, base: int = 0, what: str | None = None) -> Self: ...

        @classmethod
        def offset_of(cls, name: str) -> int: ...


if TYPE_CHECKING:
    S = TypeVar("S", bound=Struct)


def _int_field(offset: int, size: int, enum: type[enum.IntEnum] | None, default: Any) -> Any:
    if default is None:
        default = enum(0) if enum is not None else 0
    return field(default=default,
                             metadata={"layout": _Spec(offset, size, "int", enum=enum)})


def u8(offset: int, *, enum: type[enum.IntEnum] | None = None, default: Any = None) -> Any:
    return _int_field(offset, 1, enum, default)


def u16(offset: int, *, enum: type[enum.IntEnum] | None = None, default: Any = None) -> Any:
    return _int_field(offset, 2, enum, default)


def u24(offset: int, *, enum: type[enum.IntEnum] | None = None, default: Any = None) -> Any:
    """Three bytes, as UEFI's EFI_COMMON_SECTION_HEADER stores a section size."""
    return _int_field(offset, 3, enum, default)


def u32(offset: int, *, enum: type[enum.IntEnum] | None = None, default: Any = None) -> Any:
    return _int_field(offset, 4, enum, default)


def u64(offset: int, *, enum: type[enum.IntEnum] | None = None, default: Any = None) -> Any:
    return _int_field(offset, 8, enum, default)


def raw(offset: int, size: int, *, default: bytes | None = None) -> Any:
    """A fixed-size byte string (digests, GUIDs, opaque arrays); zero-filled by default."""
    return field(default=bytes(size) if default is None else default,
                             metadata={"layout": _Spec(offset, size, "raw")})


def text(offset: int, size: int, *, default: str = "") -> Any:
    """A fixed-width ASCII string, right-padded with spaces (the fields of an ar header).

    Parsing drops the trailing spaces and refuses a byte outside ASCII; writing pads with
    spaces and refuses a value that is not ASCII or does not fit.
    """
    return field(default=default, metadata={"layout": _Spec(offset, size, "text")})


def nested(offset: int, cls: type[Struct]) -> Any:
    """Another layout structure embedded at ``offset``."""
    return field(default_factory=cls,
                             metadata={"layout": _Spec(offset, cls.SIZE, "nested", nested=cls)})


def _compile(cls: type, size: int) -> tuple[_struct.Struct, list[tuple[str, _Spec] | tuple[None, int, int]]]:
    """Check the fields of a ``@struct`` class (no overlap, within ``size``) and compile them."""
    specs = []
    for f in fields(cls):
        spec_ = f.metadata.get("layout")
        if spec_ is None:
            raise TypeError(f"{cls.__name__}.{f.name}: every field needs a layout declaration")
        specs.append((spec_.offset, f.name, spec_))
    specs.sort(key=lambda item: item[0])

    fmt = ["<"]
    items: list[tuple[str, _Spec] | tuple[None, int, int]] = []
    pos = 0
    for offset, name, spec_ in specs:
        if offset < pos:
            raise TypeError(f"{cls.__name__}.{name} at {offset:#x} overlaps the previous field")
        if offset > pos:
            fmt.append(f"{offset - pos}s")
            items.append((None, pos, offset - pos))
        if spec_.kind == "int" and spec_.size in _INT_CODES:
            fmt.append(_INT_CODES[spec_.size])
        else:  # raw, nested, and integers struct has no code for (u24): bytes, converted below
            fmt.append(f"{spec_.size}s")
        items.append((name, spec_))
        pos = offset + spec_.size
    if pos > size:
        raise TypeError(f"{cls.__name__}: fields end at {pos:#x}, beyond the declared size {size:#x}")
    if pos < size:
        fmt.append(f"{size - pos}s")
        items.append((None, pos, size - pos))
    compiled = _struct.Struct("".join(fmt))
    if compiled.size != size:
        raise TypeError(f"{cls.__name__}: compiled size {compiled.size:#x} != declared {size:#x}")
    return compiled, items


#: every ``@struct`` class declared so far, and the function that checks and compiles its layout
_CHECKS: dict[type, Callable[[], object]] = {}


def check(cls: type[Struct]) -> None:
    """Check and compile the layout of ``cls`` now (TypeError if it is malformed)."""
    _CHECKS[cls]()


def declared() -> list[type[Struct]]:
    """Every ``@struct`` class whose module has been imported."""
    return list(_CHECKS)


def struct(*, size: int, spec: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: give a frozen record its layout, checked and compiled on first use."""

    def wrap(cls: type[S]) -> type[S]:
        if not is_record(cls):
            raise TypeError(f"{cls.__name__}: apply @layout.struct on top of @record (measure.record)")
        # Checking and compiling the layout waits for the first use of the structure, so
        # importing a module that declares many (the VMSA has over a hundred fields) costs
        # no more than its records; tests/measure/test_layout.py compiles every one.
        state: list[tuple[_struct.Struct, list[tuple[str, _Spec] | tuple[None, int, int]]]] = []

        def layout_of() -> tuple[_struct.Struct, list[tuple[str, _Spec] | tuple[None, int, int]]]:
            if not state:
                state.append(_compile(cls, size))
            return state[0]

        def to_bytes(self: Struct) -> bytes:
            compiled, items = layout_of()
            values: list[int | bytes] = []
            for item in items:
                if item[0] is None:
                    values.append(bytes(item[2]))
                    continue
                name, spec_ = item
                value: Any = getattr(self, name)
                if spec_.kind == "int":
                    value = int(value)
                    if not 0 <= value < (1 << (8 * spec_.size)):
                        raise LayoutError(
                            f"{cls.__name__}.{name} = {value:#x} does not fit in {spec_.size} byte(s) "
                            f"at offset {spec_.offset:#x}; use a value below {1 << (8 * spec_.size):#x}.")
                    if spec_.size not in _INT_CODES:
                        value = value.to_bytes(spec_.size, "little")
                elif spec_.kind == "nested":
                    value = value.to_bytes()
                elif spec_.kind == "text":
                    try:
                        encoded = str(value).encode("ascii")
                    except UnicodeEncodeError:
                        raise LayoutError(f"{cls.__name__}.{name} = {value!r} at offset {spec_.offset:#x} "
                                          f"is not ASCII; use ASCII characters only.") from None
                    if len(encoded) > spec_.size:
                        raise LayoutError(f"{cls.__name__}.{name} = {value!r} does not fit in {spec_.size} "
                                          f"character(s) at offset {spec_.offset:#x}; shorten it.")
                    value = encoded.ljust(spec_.size, b" ")
                else:
                    value = bytes(value)
                    if len(value) != spec_.size:
                        raise LayoutError(
                            f"{cls.__name__}.{name} must be {spec_.size} bytes at offset "
                            f"{spec_.offset:#x}, got {len(value)}.")
                values.append(value)
            return compiled.pack(*values)

        def from_bytes(klass: type[S], data: bytes, *, base: int = 0, what: str | None = None) -> S:
            compiled, items = layout_of()
            label = what or klass.__name__
            data = bytes(data)
            if len(data) != size:
                raise LayoutError(f"{label} must be exactly {size:#x} bytes, got {len(data):#x}.")
            kwargs: dict[str, Any] = {}
            for item, value in zip(items, compiled.unpack(data), strict=True):
                if item[0] is None:
                    _, gap_off, gap_len = item
                    if any(value):
                        first = next(i for i, b in enumerate(value) if b)
                        raise LayoutError(
                            f"{label}: reserved byte at offset {base + gap_off + first:#x} is "
                            f"{value[first]:#04x}, expected zero.")
                    continue
                name, spec_ = item
                if spec_.kind == "int" and spec_.size not in _INT_CODES:
                    value = int.from_bytes(value, "little")
                if spec_.kind == "int" and spec_.enum is not None:
                    try:
                        value = spec_.enum(value)
                    except ValueError:
                        raise LayoutError(
                            f"{label}.{name} at offset {base + spec_.offset:#x} has unknown value "
                            f"{value:#x}; known: {', '.join(f'{m.name}={int(m.value):#x}' for m in spec_.enum)}."
                        ) from None
                elif spec_.kind == "text":
                    try:
                        value = value.decode("ascii").rstrip(" ")
                    except UnicodeDecodeError as e:
                        raise LayoutError(
                            f"{label}.{name}: byte at offset {base + spec_.offset + e.start:#x} is "
                            f"{value[e.start]:#04x}, not ASCII text.") from None
                elif spec_.kind == "nested" and spec_.nested is not None:
                    value = spec_.nested.from_bytes(value, base=base + spec_.offset,
                                                    what=f"{label}.{name}")
                kwargs[name] = value
            return klass(**kwargs)

        def offset_of(klass: type[Struct], name: str) -> int:
            for item in layout_of()[1]:
                if item[0] == name:
                    return item[1].offset
            raise KeyError(name)

        added: dict[str, object] = {"SIZE": size, "SPEC": spec, "to_bytes": to_bytes,
                                    "from_bytes": classmethod(from_bytes), "offset_of": classmethod(offset_of)}
        for attribute, value in added.items():
            setattr(cls, attribute, value)
        _CHECKS[cls] = layout_of
        return cls

    return wrap
