"""The auditor's errors: a report, certificate chain, signature or published value did not verify.

Every one exits with status 3.  Depends only on :mod:`measure.errors`.
"""

from __future__ import annotations

from measure.errors import BlindboxError


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
