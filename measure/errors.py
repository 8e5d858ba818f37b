"""The project's exception hierarchy.

Every error a user can cause is a subclass of :class:`BlindboxError` and carries one
complete sentence: what is wrong, where, and what to do.  The CLI maps the three
families to exit codes (bad input -> 2, verification failed -> 3); anything that is
not a ``BlindboxError`` is a bug and exits 1.
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


class BuildError(BlindboxError):
    """A guest bundle cannot be built."""


class VerificationError(BlindboxError):
    """A report, signature or comparison did not verify."""

    exit_code = 3


class SignatureInvalid(VerificationError):
    """A signature does not verify with the key it names (report, manifest, ID block)."""


class ChainInvalid(VerificationError):
    """A certificate chain does not lead to a trusted root, or its leaf is not this chip's key."""


class MeasurementMismatch(VerificationError):
    """The launch digest in a report is not the expected one."""

    def __init__(self, message: str, *, expected: bytes | list[bytes] | None = None,
                 actual: bytes | None = None):
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class PolicyViolation(VerificationError):
    """A report field violates what the relying party requires (policy, TCB, host data, ...)."""


class InternalError(Exception):
    """An invariant of our own code failed: a bug, reported with exit status 1."""
