"""Frozen records for the calculator, without :mod:`dataclasses`.

``@record`` turns a class with annotated fields into an immutable value type: keyword or
positional construction with defaults (``field(default_factory=...)`` for a fresh object
each time), ``__eq__`` and ``__hash__`` over the fields, a ``__repr__`` naming them, and
assignment refused.  :func:`fields` and :func:`replace` work as their namesakes in
:mod:`dataclasses`, and type checkers treat ``@record`` as a frozen dataclass (PEP 681).

Why not :mod:`dataclasses`: importing it loads :mod:`inspect` (with :mod:`ast`, :mod:`dis`,
:mod:`tokenize`), and each class it makes compiles generated source; together they cost
more than half of what importing the whole calculator may cost (bench/targets.py, "import
measure").  Here one generic ``__init__`` serves every class and nothing is compiled; the
classes it serves have at most a few hundred fields and are made a few times per launch.

Part of the calculator: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, ``elftools``, :mod:`builder` or :mod:`blindbox`
(docs/architecture.md).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2 ms to import; type checkers read the block below
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_kwargs):
        return lambda decorated: decorated

__all__ = ["Field", "FrozenRecordError", "field", "fields", "is_record", "record", "replace"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class FrozenRecordError(AttributeError):
    """Assignment to a field of a record (records are immutable)."""


class Field:
    """One field of a record: its name, default and metadata."""

    __slots__ = ("compare", "default", "default_factory", "metadata", "name", "repr")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | Any, metadata: Mapping[str, Any],
                 repr: bool, compare: bool) -> None:  # noqa: A002 - the dataclasses spelling
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.metadata = metadata
        self.repr = repr
        self.compare = compare

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, metadata={dict(self.metadata)!r})"


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING,
          metadata: Mapping[str, Any] | None = None, repr: bool = True,  # noqa: A002
          compare: bool = True) -> Any:
    """Declare a field with a default, a default factory, metadata, or left out of repr/compare."""
    if default is not MISSING and default_factory is not MISSING:
        raise TypeError("a field takes a default or a default_factory, not both")
    return Field(default, default_factory, {} if metadata is None else metadata, repr, compare)


_MUTABLE_DEFAULTS = (list, dict, set, bytearray)


def _is_classvar(annotation: object) -> bool:
    # with ``from __future__ import annotations`` every annotation is a string
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return isinstance(text, str) and text.split("[", 1)[0].strip() in ("ClassVar", "typing.ClassVar")


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    names: tuple[str, ...] = cls.__match_args__
    if not kwargs and len(args) == len(names):
        # Every field given by position, the common case on the hot paths (a launch matrix makes
        # two records per digest): one dict update instead of the checks below, a third of the time.
        self.__dict__.update(zip(names, args, strict=True))
    else:
        _init_general(self, cls, args, kwargs)
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _init_general(self: Any, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # Set and dict operations rather than a loop over the fields: a VMSA has 110 of them, a
    # dozen given by keyword.  Errors come in the order a field-by-field check finds them.
    names: tuple[str, ...] = cls.__match_args__
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments but {len(args)} were given")
    given = dict(zip(names, args, strict=False))
    if kwargs:
        if given and not kwargs.keys().isdisjoint(given):
            twice = next(name for name in names if name in given and name in kwargs)
            raise TypeError(f"{cls.__name__}() got multiple values for argument {twice!r}")
        given.update(kwargs)
    for name in cls.__record_required__:
        if name not in given:
            raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
    if kwargs and not kwargs.keys() <= cls.__record_names__:
        unknown = next(name for name in kwargs if name not in names)
        raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {unknown!r}")
    values = {**cls.__record_defaults__, **given}
    for name, factory in cls.__record_factories__:
        if name not in given:
            values[name] = factory()
    self.__dict__.update({name: values[name] for name in names})


def _key(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, f.name) for f in type(self).__record_fields__ if f.compare)


def _eq(self: Any, other: object) -> object:  # bool, or NotImplemented
    if other.__class__ is not self.__class__:
        return NotImplemented
    return bool(_key(self) == _key(other))


def _hash(self: Any) -> int:
    return hash(_key(self))


def _repr(self: Any) -> str:
    cls = type(self)
    body = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in cls.__record_fields__ if f.repr)
    return f"{cls.__qualname__}({body})"


def _setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable; use replace()")


def _delattr(self: Any, name: str) -> None:
    raise FrozenRecordError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")


@dataclass_transform(frozen_default=True, field_specifiers=(field, Field))
def record(cls: type[T]) -> type[T]:
    """Class decorator: make ``cls`` a frozen record of its annotated fields (bases' first)."""
    declared: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get("__record_fields__", ()):
            declared[f.name] = f
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else Field(value, MISSING, {}, True, True)
        if isinstance(f.default, _MUTABLE_DEFAULTS):
            raise TypeError(f"{cls.__name__}.{name}: a mutable default ({type(f.default).__name__}) would be "
                            f"shared by every instance; use field(default_factory=...)")
        f.name = name
        if f.default is MISSING:
            if name in cls.__dict__:
                delattr(cls, name)
        else:
            setattr(cls, name, f.default)
        declared.pop(name, None)
        declared[name] = f
    seen_default = ""
    for f in declared.values():
        if f.default is not MISSING or f.default_factory is not MISSING:
            seen_default = f.name
        elif seen_default:
            raise TypeError(f"{cls.__name__}.{f.name}: a field without a default follows {seen_default!r}, "
                            f"which has one")
    added: dict[str, object] = {"__record_fields__": tuple(declared.values()), "__match_args__": tuple(declared),
                                "__record_names__": frozenset(declared),
                                "__record_required__": tuple(f.name for f in declared.values()
                                                             if f.default is MISSING and f.default_factory is MISSING),
                                "__record_defaults__": {f.name: f.default for f in declared.values()
                                                        if f.default is not MISSING},
                                "__record_factories__": tuple((f.name, f.default_factory) for f in declared.values()
                                                              if f.default_factory is not MISSING),
                                "__init__": _init, "__eq__": _eq, "__hash__": _hash, "__repr__": _repr,
                                "__setattr__": _setattr, "__delattr__": _delattr}
    for name, value in added.items():
        setattr(cls, name, value)
    return cls


def is_record(obj: object) -> bool:
    """Whether ``obj`` is a record class or an instance of one."""
    cls = obj if isinstance(obj, type) else type(obj)
    return "__record_fields__" in cls.__dict__


def fields(obj: object) -> tuple[Field, ...]:
    """The fields of a record class or instance, in declaration order (TypeError for anything else)."""
    cls = obj if isinstance(obj, type) else type(obj)
    declared = getattr(cls, "__record_fields__", None)
    if declared is None:
        raise TypeError(f"{cls.__name__} is not a record")
    return declared  # type: ignore[no-any-return]


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with the given fields changed."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    unknown = sorted(set(changes) - set(values))
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {unknown[0]!r}")
    values.update(changes)
    return type(obj)(**values)
