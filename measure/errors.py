"""The project's exception hierarchy.

Every error a user can cause is a subclass of :class:`BlindboxError` and carries one
complete sentence: what is wrong, where, and what to do.  The CLI maps the
families to exit codes (bad input -> 2, verification failed -> 3); anything that is
not a ``BlindboxError`` is a bug and exits 1.

This module holds the base classes every part shares and the calculator's own errors;
the auditor's (:mod:`blindbox.audit.errors`) and the builder's (:mod:`builder.errors`)
subclass them.  It depends on nothing.
"""

from __future__ import annotations


class BlindboxError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 2


class MeasureError(BlindboxError):
    """A launch digest cannot be computed from the given inputs."""


class LayoutError(MeasureError):
    """A binary structure has the wrong length, a nonzero reserved field or a bad enum."""


class FirmwareError(MeasureError):
    """The firmware image is malformed (truncated, corrupt table or metadata)."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None):
        super().__init__(message)
        self.path = path
        self.offset = offset


class UnsupportedFirmware(MeasureError):
    """The firmware is well formed but cannot do what was asked (missing section)."""

    def __init__(self, message: str, *, missing: str | None = None):
        super().__init__(message)
        self.missing = missing


class InputError(MeasureError):
    """A parameter or input file is unusable (missing file, bad value, bad combination)."""


class InternalError(Exception):
    """An invariant of our own code failed: a bug, reported with exit status 1."""
