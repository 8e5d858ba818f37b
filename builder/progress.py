"""Progress events of long work (builds, locks, downloads, check-repro), for whoever shows them.

The builder never prints.  Code that does something slow tells the *current* receiver
about it instead, and the command line decides how (or whether) to show it:

* :meth:`Progress.step` -- a named stage begins (a build step such as ``fetch`` or ``initrd``);
* :meth:`Progress.task` -- something inside a stage that may take a while and is worth
  announcing on its own line (``resolving sid package lists``, ``build A``);
* :meth:`Progress.download` / :meth:`Progress.downloaded` -- bytes of a named download
  arriving, with the total when it is known, and its end.

The receiver is held in a context variable: :func:`current` returns it, :func:`using`
installs one for a ``with`` block.  The default, :data:`NULL`, ignores every event, so
library callers (tests, other programs) see no difference unless they install their own.
Events are cheap to send: a receiver throttles what it draws.

A child process (check-repro's builds) can pass its events to its parent as text lines:
:func:`encode_event` makes one, :func:`forward_event` turns one back into a call on a
receiver (with the child's step names prefixed, e.g. ``build A: initrd``).

Part of the builder; it imports nothing of the project and nothing outside the standard
library, and never prints (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator


class Progress:
    """A receiver of progress events.  This base class ignores them all; renderers override."""

    def step(self, name: str) -> None:
        """A named stage of the work begins (the previous one, if any, has ended)."""

    def task(self, text: str) -> None:
        """Work inside the current stage that may take a while, e.g. ``resolving sid package lists``."""

    def download(self, name: str, done: int, total: int | None) -> None:
        """``done`` bytes of ``name`` have arrived so far, out of ``total`` (None when unknown)."""

    def downloaded(self, name: str, size: int) -> None:
        """The download of ``name`` has finished with ``size`` bytes."""


#: The receiver that ignores everything (the default).
NULL = Progress()

_current: contextvars.ContextVar[Progress] = contextvars.ContextVar("blindbox_progress", default=NULL)


def current() -> Progress:
    """The receiver installed by the innermost :func:`using` (:data:`NULL` when none is)."""
    return _current.get()


@contextlib.contextmanager
def using(receiver: Progress) -> Iterator[Progress]:
    """Send the progress events of the ``with`` block (in this thread or task) to ``receiver``."""
    token = _current.set(receiver)
    try:
        yield receiver
    finally:
        _current.reset(token)


#: The environment variable that asks a blindbox command for event lines on stderr ("events").
EVENTS_ENV = "BLINDBOX_PROGRESS"
#: The start of an event line; what follows is a JSON array ``[kind, *arguments]``.
EVENT_PREFIX = "blindbox-progress: "
_KINDS = {"step": 1, "task": 1, "download": 3, "downloaded": 2}


def encode_event(kind: str, *args: str | int | None) -> str:
    """One event as a line of text (without the newline) for :func:`forward_event`."""
    assert _KINDS.get(kind) == len(args), (kind, args)
    return EVENT_PREFIX + json.dumps([kind, *args], ensure_ascii=True)


def forward_event(line: str, receiver: Progress, prefix: str = "") -> bool:
    """Pass the event in ``line`` on to ``receiver``, its step name prefixed with ``prefix``;
    False (nothing done) when ``line`` is not a well-formed event line."""
    if not line.startswith(EVENT_PREFIX):
        return False
    try:
        kind, *args = json.loads(line[len(EVENT_PREFIX):])
    except (ValueError, TypeError):
        return False
    if _KINDS.get(kind) != len(args) or not isinstance(args[0], str):
        return False
    if kind == "step":
        receiver.step(prefix + args[0])
    elif kind == "task":
        receiver.task(args[0])
    elif kind == "download" and isinstance(args[1], int) and (args[2] is None or isinstance(args[2], int)):
        receiver.download(args[0], args[1], args[2])
    elif kind == "downloaded" and isinstance(args[1], int):
        receiver.downloaded(args[0], args[1])
    else:
        return False
    return True
