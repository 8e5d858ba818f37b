"""Click parameter types shared by every command, so one value gets one answer everywhere.

A malformed value is a usage error (exit status 2) with the same sentence whichever
command it is given to: integers in any base, SVNs, VMPLs, guest policies, and digests
or identifiers of a fixed size in hex (or base64 where a command allows it).

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from __future__ import annotations

import base64
import binascii

import click

from measure.errors import InputError
from measure.spec import guest_policy_problem


class _Type(click.ParamType):
    def reject(self, value, param, clause: str):
        """Refuse ``value`` as bad input (exit 2): "--option 'value' <clause>." like every other input error."""
        if param is None:
            name = "value"
        elif param.param_type_name == "option":
            name = max(param.opts, key=len)
        else:
            name = param.human_readable_name
        raise InputError(f"{name} {value!r} {clause}.")


class AutoInt(_Type):
    """An integer in any base Python accepts (0x.., 0o.., 0b.., decimal), optionally within a range."""

    name = "VALUE"

    def __init__(self, lo: int | None = None, hi: int | None = None, what: str = "integer"):
        self.lo, self.hi, self.what = lo, hi, what

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip(), 0)
            except ValueError:
                self.reject(value, param, "is not an integer (use decimal or 0x-prefixed hex)")
        if (self.lo is not None and number < self.lo) or (self.hi is not None and number > self.hi):
            self.reject(value, param, f"is not a valid {self.what}; give {self.lo} to {self.hi}"
                                      f"{f' ({self.hi:#x})' if self.hi and self.hi > 9 else ''}")
        return number


def Svn() -> AutoInt:
    """GUEST_SVN: 32 bits."""
    return AutoInt(0, (1 << 32) - 1, "SVN (32 bits)")


def Vmpl() -> AutoInt:
    """A virtual machine privilege level: 0 to 3."""
    return AutoInt(0, 3, "VMPL")


class GuestPolicy(AutoInt):
    """An SEV-SNP GUEST_POLICY: 64 bits, bit 17 set, reserved bits 63:26 clear."""

    name = "POLICY"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        problem = guest_policy_problem(number)
        if problem is not None:
            self.reject(value, param, f"is not a valid SEV-SNP guest policy: {problem}")
        return number


class HexBytes(_Type):
    """Exactly ``size`` bytes, as hex digits (optionally 0x-prefixed) or, where allowed, base64."""

    name = "HEX"

    def __init__(self, size: int, *, base64_ok: bool = False, prefix: str | None = None):
        self.size, self.base64_ok, self.prefix = size, base64_ok, prefix

    def convert(self, value, param, ctx):
        if isinstance(value, bytes):
            return value
        text = str(value).strip()
        if self.prefix and text.lower().startswith(self.prefix):
            text = text[len(self.prefix):]
        hex_text = text[2:] if text[:2].lower() == "0x" else text
        raw = None
        if len(hex_text) == 2 * self.size:
            try:
                raw = bytes.fromhex(hex_text)
            except ValueError:
                raw = None
        if raw is None and self.base64_ok:
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raw = None
        if raw is None or len(raw) != self.size:
            forms = f"{2 * self.size} hex digits" + (" or base64" if self.base64_ok else "")
            self.reject(value, param, f"is not {self.size} bytes; give {forms}")
        return raw
