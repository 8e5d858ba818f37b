"""Named constants for the calculator, without :mod:`enum`.

:class:`Named`, :class:`NamedInt` and :class:`NamedFlag` stand in at run time for
``enum.Enum``, ``enum.IntEnum`` and ``enum.IntFlag``, with the behaviour of Python 3.11's:
members in definition order (``iter``, ``reversed``, ``len``), ``.name`` and ``.value``,
lookup by value (``X(value)``, ValueError "... is not a valid X" otherwise) and by name
(``X["NAME"]``, KeyError), ``X.__members__`` (aliases included), ``in`` on the class,
the same ``str()``, ``repr()``, ``format()`` and hash (an IntEnum is its int for str,
format, hash, equality and JSON; an Enum is not equal to its value), members that cannot be
reassigned, and pickling by name.  :class:`NamedFlag` adds ``|``, ``&``, ``^`` and ``~``
with ints or members, giving members for combinations and for unknown bits (kept, as
IntFlag's KEEP boundary does), with the names, iteration, ``len`` and ``in`` of 3.11.
Not supported: ``auto()``, the functional API, ``_missing_`` hooks, ``_ignore_``; a name
starting with an underscore is never a member.

Type checkers see the real enum classes instead (measure/spec.py and measure/vmm.py import
these under ``if not TYPE_CHECKING``), so member types and exhaustiveness checks are
enum's; tests/measure/test_named.py holds every operation to enum's, member by member.

Why not :mod:`enum`: importing it (with the :mod:`functools`, :mod:`collections`,
:mod:`operator`, :mod:`keyword` and :mod:`reprlib` it loads) costs about a third of what
importing the whole calculator may cost (bench/targets.py, "import measure").

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2 ms to import; type checkers read the block below
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

__all__ = ["Named", "NamedFlag", "NamedInt", "NamedType"]

_mappingproxy = type(type.__dict__)  # types.MappingProxyType, without importing types


def _is_descriptor(obj: object) -> bool:
    kind = type(obj)
    return hasattr(kind, "__get__") or hasattr(kind, "__set__") or hasattr(kind, "__delete__")


def _is_member_name(name: str) -> bool:
    return not name.startswith("_")


class NamedType(type):
    """Metaclass of :class:`Named` classes: turns their public constants into members."""

    _member_map_: dict[str, Any]
    _member_names_: list[str]
    _value2member_map_: dict[Any, Any]
    _flag_mask_: int
    _all_bits_: int

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> NamedType:
        declared = [(key, value) for key, value in namespace.items()
                    if _is_member_name(key) and not _is_descriptor(value)]
        for base in bases:
            if getattr(base, "_member_names_", None):
                raise TypeError(f"{name}: cannot extend {base.__name__}, which has members")
            for key, _ in declared:
                if hasattr(base, key):
                    raise TypeError(f"{name}.{key}: a member may not hide the attribute {key!r} of {base.__name__}")
        names = {key for key, _ in declared}
        body = {key: value for key, value in namespace.items() if key not in names}
        cls = super().__new__(mcls, name, bases, body)
        member_map: dict[str, Any] = {}
        member_names: list[str] = []
        by_value: dict[Any, Any] = {}
        setter = type.__setattr__
        setter(cls, "_member_map_", member_map)
        setter(cls, "_member_names_", member_names)
        setter(cls, "_value2member_map_", by_value)
        flag = getattr(cls, "_flag_", False)
        for key, value in declared:
            member = None
            for existing in member_map.values():
                if existing._value_ == value:
                    member = existing  # an alias: found by name, not listed
                    break
            if member is None:
                member = cls._new_member_(value)
                member._name_ = key
                member._value_ = value
                if not flag or (value > 0 and value & (value - 1) == 0):
                    member_names.append(key)  # a flag lists single bits only; the others are aliases
                try:
                    by_value.setdefault(value, member)
                except TypeError:
                    pass  # unhashable: found by a linear search
            member_map[key] = member
            setter(cls, key, member)
        if flag:
            singles = multi = 0
            for member in member_map.values():
                if member._name_ in member_names:
                    singles |= member._value_
                else:
                    multi |= member._value_
            setter(cls, "_flag_mask_", singles)
            setter(cls, "_all_bits_", (1 << (singles | multi).bit_length()) - 1)
        return cls

    def _new_member_(cls, value: Any) -> Any:
        return object.__new__(cls)  # type: ignore[arg-type]

    def _missing_(cls, value: Any) -> Any:
        return None

    def __call__(cls, value: Any) -> Any:  # lookup by value, as Enum's
        if type(value) is cls:
            return value
        try:
            return cls._value2member_map_[value]
        except KeyError:
            pass
        except TypeError:
            for member in cls._member_map_.values():
                if member._value_ == value:
                    return member
        found = cls._missing_(value)
        if found is None:
            raise ValueError(f"{value!r} is not a valid {cls.__qualname__}")
        return found

    def __iter__(cls) -> Iterator[Any]:
        return (cls._member_map_[name] for name in cls._member_names_)

    def __reversed__(cls) -> Iterator[Any]:
        return (cls._member_map_[name] for name in reversed(cls._member_names_))

    def __len__(cls) -> int:
        return len(cls._member_names_)

    def __bool__(cls) -> bool:
        return True

    def __getitem__(cls, name: str) -> Any:
        return cls._member_map_[name]

    def __contains__(cls, member: object) -> bool:
        if not isinstance(member, Named):
            import warnings  # only on this misuse, which Python 3.11 deprecates
            warnings.warn("in 3.12 __contains__ will no longer raise TypeError, but will return True or\n"
                          "False depending on whether the value is a member or the value of a member",
                          DeprecationWarning, stacklevel=2)
            raise TypeError(f"unsupported operand type(s) for 'in': '{type(member).__qualname__}' and "
                            f"'{type(cls).__qualname__}'")
        return isinstance(member, cls) and member._name_ in cls._member_map_

    @property
    def __members__(cls) -> Mapping[str, Any]:
        return _mappingproxy(cls._member_map_)

    def __repr__(cls) -> str:
        return f"<{'flag' if getattr(cls, '_flag_', False) else 'enum'} {cls.__name__!r}>"

    def __setattr__(cls, name: str, value: Any) -> None:
        if name in cls.__dict__.get("_member_map_", {}):
            raise AttributeError(f"cannot reassign member {name!r}")
        super().__setattr__(name, value)

    def __delattr__(cls, name: str) -> None:
        if name in cls.__dict__.get("_member_map_", {}):
            raise AttributeError(f"{cls.__name__!r} cannot delete member {name!r}.")
        super().__delattr__(name)


class Named(metaclass=NamedType):
    """Base of constants that are not numbers (``enum.Enum``): ``X.A != X.A.value``."""

    _name_: Any
    _value_: Any
    _inverted_: Any

    @property
    def name(self) -> Any:
        """The name of the member (None for a flag combination without known bits)."""
        return self._name_

    @property
    def value(self) -> Any:
        return self._value_

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: {self._value_!r}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self._name_}"

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)

    def __hash__(self) -> int:
        return hash(self._name_)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return getattr, (type(self), self._name_)


class NamedInt(int, Named):
    """Base of integer constants (``enum.IntEnum``): an int for str, format, hash, ==, <, JSON."""

    @classmethod
    def _new_member_(cls, value: Any) -> Any:
        return int.__new__(cls, value)

    __str__ = int.__repr__
    __format__ = int.__format__  # type: ignore[assignment]
    __hash__ = int.__hash__

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: {int.__repr__(self)}>"


class NamedFlag(NamedInt):
    """Base of bit sets (``enum.IntFlag``): members combine with ``|``, ``&``, ``^``, ``~``.

    A combination is a member too, named ``A|B`` after its known bits in definition order,
    with unknown bits kept and appended as a number (``A|2048``); without known bits its
    name is None.
    """

    _flag_ = True

    @classmethod
    def _missing_(cls, value: Any) -> Any:
        if not isinstance(value, int):
            return None
        mask, all_bits = cls._flag_mask_, cls._all_bits_
        negative = None
        if value < 0:
            if value < ~all_bits or value & (all_bits ^ mask):
                value = value + max(all_bits + 1, 1 << value.bit_length())  # keep every bit given
            else:
                negative, value = value, value + all_bits + 1
        known = value & mask
        unknown = value & ~mask
        member = int.__new__(cls, value)
        member._value_ = value
        if known:
            member._name_ = "|".join(m._name_ for m in cls if m._value_ & known)
            if unknown:
                member._name_ += f"|{unknown!r}"
        else:
            member._name_ = None
        if not unknown:
            member = cls._value2member_map_.setdefault(value, member)
            if negative is not None:
                cls._value2member_map_[negative] = member
        return member

    def __or__(self, other: object) -> Any:
        if not isinstance(other, int):
            return NotImplemented
        return type(self)(self._value_ | (other._value_ if isinstance(other, type(self)) else other))

    def __and__(self, other: object) -> Any:
        if not isinstance(other, int):
            return NotImplemented
        return type(self)(self._value_ & (other._value_ if isinstance(other, type(self)) else other))

    def __xor__(self, other: object) -> Any:
        if not isinstance(other, int):
            return NotImplemented
        return type(self)(self._value_ ^ (other._value_ if isinstance(other, type(self)) else other))

    __ror__ = __or__
    __rand__ = __and__
    __rxor__ = __xor__

    def __invert__(self) -> Any:
        # as IntFlag: every bit flipped, kept as a non-negative value, and ~~x is x
        inverted = self.__dict__.get("_inverted_")
        if inverted is None:
            inverted = self._inverted_ = type(self)(~self._value_)
            inverted._inverted_ = self
        return inverted

    def __contains__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            raise TypeError(f"unsupported operand type(s) for 'in': {type(other).__qualname__!r} and "
                            f"{type(self).__qualname__!r}")
        return bool(other._value_ & self._value_ == other._value_)

    def __iter__(self) -> Iterator[Any]:
        value = self._value_
        return (m for m in type(self) if m._value_ & value)

    def __len__(self) -> int:
        return int(self._value_).bit_count()

    def __bool__(self) -> bool:
        return bool(self._value_)

    def __repr__(self) -> str:
        if self._name_ is None:
            return f"<{type(self).__name__}: {int.__repr__(self)}>"
        return f"<{type(self).__name__}.{self._name_}: {int.__repr__(self)}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self._name_ in type(self)._member_map_:
            return getattr, (type(self), self._name_)
        return type(self), (self._value_,)
