"""Errors raised while building a guest bundle.

All of them are :class:`BuildError` subclasses (of :class:`measure.errors.BlindboxError`), so the CLI maps them to
exit status 2.  Each carries one complete sentence: what went wrong, where, and what to
do about it.  The structured attributes (path, line, expected digest, ...) are there for
callers that want to present or test them; ``str(error)`` is always the full sentence.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

from measure.errors import BlindboxError

__all__ = [
    "BuildError", "InputDigestMismatch", "OfflineMiss", "RecipeError",
    "SourceError", "SourceGone", "StaleSuite", "ToolMissing",
]


class BuildError(BlindboxError):
    """A guest bundle cannot be built."""


class RecipeError(BuildError):
    """A recipe or lock file is invalid: unknown key, bad value, missing field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 key: str | None = None):
        super().__init__(message)
        self.path = path
        self.line = line
        self.key = key


class SourceError(BuildError):
    """An input cannot be fetched, resolved or unpacked."""

    def __init__(self, message: str, *, source: str | None = None):
        super().__init__(message)
        #: what was being fetched, e.g. ``"debian:bookworm/ovmf=2022.11-6+deb12u2"`` or a URL
        self.source = source


class InputDigestMismatch(SourceError):
    """The bytes of an input differ from its pinned sha256."""

    def __init__(self, message: str, *, source: str | None = None, expected: str | None = None,
                 actual: str | None = None, path: str | None = None):
        super().__init__(message, source=source)
        self.expected = expected
        self.actual = actual
        self.path = path


class SourceGone(SourceError):
    """A pinned input is no longer served by its origin and is not in the local cache."""


class OfflineMiss(SourceError):
    """Offline mode was requested and the input is not in the local cache."""


class StaleSuite(SourceError):
    """apt (or our own check) refuses a Debian suite whose Release file has expired."""

    def __init__(self, message: str, *, source: str | None = None, suite: str | None = None):
        super().__init__(message, source=source)
        self.suite = suite


class ToolMissing(BuildError):
    """An external program the build needs is not installed."""

    def __init__(self, tool: str, package: str, message: str | None = None):
        if message is None:
            message = (f"{tool} not found on PATH; install the Debian package {package} "
                       f"(for example with scripts/setup) and run the command again.")
        super().__init__(message)
        self.tool = tool
        self.package = package

