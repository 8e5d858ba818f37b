"""Shared pieces of the property fuzz targets (tests/*/test_fuzz*.py).

Invariant of every target: a parser given hostile bytes returns, or raises a
:class:`~measure.errors.BlindboxError` subclass, within a time budget; nothing else may
escape.  ``budget()`` scales the number of examples with the active hypothesis profile
(tests/conftest.py: ``ci`` by default, ``BLINDBOX_FUZZ=long`` for the long run) and sets
the per-example deadline.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import settings
from hypothesis import strategies as st

#: examples per target in the long run, relative to CI
SCALE = {"ci": 1, "long": 100}[os.environ.get("BLINDBOX_FUZZ", "ci")]


def budget(examples: int, *, deadline_ms: int = 2000) -> settings:
    """``examples`` in CI (times SCALE in the long run); each example within ``deadline_ms``."""
    return settings(max_examples=examples * SCALE, deadline=timedelta(milliseconds=deadline_ms))


#: values that break size and count fields: zero, one, sign and width boundaries, page sizes
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFF0, 0xFFFFFFFF]


def mutations(seed: bytes, *, max_edits: int = 6, resize: bool = True, region: tuple[int, int] | None = None):
    """Byte strings derived from a real seed: overwrites, truncation, insertion, deletion.

    Mutating a valid structure reaches the checks deep inside a parser; random bytes
    mostly stop at the first magic number.  ``resize=False`` keeps the length (for
    formats whose size is checked first); ``region`` = (start, end) aims the edits there.
    """
    lo, hi = region if region else (0, max(len(seed), 1))
    pos = st.integers(lo, hi - 1)
    edits = [st.tuples(st.just("set"), pos, st.integers(0, 255)),
             st.tuples(st.just("word"), pos, st.sampled_from(INTERESTING))]
    if resize:
        edits += [st.tuples(st.just("cut"), st.integers(0, len(seed)), st.just(0)),
                  st.tuples(st.just("insert"), pos, st.integers(0, 255)),
                  st.tuples(st.just("delete"), pos, st.integers(1, 64))]
    return st.lists(st.one_of(*edits), min_size=1, max_size=max_edits).map(lambda e: apply(seed, e))


def apply(seed: bytes, edits) -> bytes:
    out = bytearray(seed)
    for op, pos, value in edits:
        if op == "set" and out:
            out[pos % len(out)] = value
        elif op == "word" and len(out) >= 4:
            p = pos % (len(out) - 3)
            out[p:p + 4] = value.to_bytes(4, "little")
        elif op == "cut":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = bytes([value])
        elif op == "delete":
            del out[pos:pos + value]
    return bytes(out)


def json_paths(node, prefix=()):
    """Every path (a tuple of keys and indexes) into a JSON document, the root's ``()`` first."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from json_paths(v, prefix + (i,))
