"""The AMD certificate table a host attaches to an extended attestation report.

``SNP_GET_EXT_REPORT`` (``/dev/sev-guest``) and configfs-tsm's ``auxblob`` return the
certificates the host provisioned as one blob that starts with a table (GHCB specification
56421, "SNP Extended Guest Request"): entries of {GUID (16 bytes), offset (u32 LE), length
(u32 LE)}, ended by an all-zero entry; offsets count from the start of the blob and point
past the table.  The GUIDs name the certificates:

    VCEK 63da758d-e664-4564-adc5-f4b93be8accd    ASK  4ab7b379-bbac-4fe4-a02f-05aef327c782
    VLEK a8074bc2-a25a-483e-aae6-39c045a0b8a1    ARK  c0b406a4-a803-4952-9743-3fb6014cd0ae

AMD's own tools (sev-guest's ``uuid_parse``, go-sev-guest, virtee's ``uuid`` crate) put the
sixteen bytes on the wire in the order the text is written (RFC 4122); a table whose GUIDs
are in the mixed-endian form (``uuid.bytes_le``) is read as well, since the host's table is
not trusted anyway: each certificate is checked by the signature chain.

The table comes from the host, so every malformation is refused with one sentence
(:class:`CertTableError`, exit status 2), never read past.

Part of the auditor: it may import :mod:`measure`, :mod:`blindbox.files`, ``cryptography``
and the standard library, never :mod:`builder`, :mod:`blindbox.cli`, ``click`` or ``yaml``
(docs/architecture.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from measure import layout
from measure.record import record
from measure.errors import InputError

#: name -> GUID of the certificates the GHCB specification names.
GUIDS: dict[str, uuid.UUID] = {
    "vcek": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    "vlek": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    "ask": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    "ark": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
}
_BY_WIRE: dict[bytes, str] = {**{g.bytes: n for n, g in GUIDS.items()},
                              **{g.bytes_le: n for n, g in GUIDS.items()}}
#: A host provisions a handful of certificates; a table announcing more is not one.
MAX_ENTRIES = 64


class CertTableError(InputError):
    """The host's certificate table is malformed."""


@layout.struct(size=24, spec="GHCB specification 56421, SNP Extended Guest Request: certificate table entry")
@record
class CertTableEntry(layout.Struct):
    guid: bytes = layout.raw(0x00, 16)
    offset: int = layout.u32(0x10)
    length: int = layout.u32(0x14)


def guid_name(guid: bytes) -> str:
    """"vcek", "vlek", "ask", "ark", or the GUID's text for any other entry."""
    return _BY_WIRE.get(guid) or str(uuid.UUID(bytes=guid))


def parse_cert_table(blob: bytes, *, source: str = "the certificate table") -> dict[str, bytes]:
    """{name: certificate bytes} of a certificate table; ``b""`` (no table) gives {}.

    Bytes after the last certificate are allowed (the kernel hands over a page-sized,
    zero-filled buffer).
    """
    if not blob:
        return {}
    size = CertTableEntry.SIZE
    entries: list[CertTableEntry] = []
    pos = 0
    while True:
        if pos + size > len(blob):
            raise CertTableError(f"{source} has no all-zero entry ending it within its {len(blob)} bytes; "
                                 f"the host sent a truncated or malformed table.")
        entry = CertTableEntry.from_bytes(blob[pos:pos + size])
        pos += size
        if entry.guid == bytes(16):
            if entry.offset or entry.length:
                raise CertTableError(f"{source}'s entry {len(entries)} has a zero GUID but offset {entry.offset} "
                                     f"and length {entry.length}; the ending entry must be all zeros.")
            break
        if len(entries) == MAX_ENTRIES:
            raise CertTableError(f"{source} has more than {MAX_ENTRIES} entries; it is not a host's "
                                 f"certificate table.")
        entries.append(entry)
    table_end = pos
    out: dict[str, bytes] = {}
    for index, entry in enumerate(entries):
        name = guid_name(entry.guid)
        if name in out:
            raise CertTableError(f"{source} lists {name.upper() if name in GUIDS else name} twice (entry "
                                 f"{index}); a table names each certificate once.")
        if entry.length == 0:
            raise CertTableError(f"{source}'s entry {index} ({name}) has length 0; an entry points at "
                                 f"a certificate.")
        if entry.offset < table_end:
            raise CertTableError(f"{source}'s entry {index} ({name}) starts at offset {entry.offset}, inside "
                                 f"the table itself (which ends at {table_end}).")
        if entry.offset + entry.length > len(blob):
            raise CertTableError(f"{source}'s entry {index} ({name}) spans bytes [{entry.offset}, "
                                 f"{entry.offset + entry.length}) but the blob has only {len(blob)}; the "
                                 f"table was truncated.")
        out[name] = blob[entry.offset:entry.offset + entry.length]
    return out


def encode_cert_table(certs: Mapping[str, bytes], *, guid_order: str = "rfc4122") -> bytes:
    """A certificate table holding ``certs`` ({"vcek"/"vlek"/"ask"/"ark" or GUID text: bytes}).

    ``guid_order`` "rfc4122" writes GUIDs as AMD's tools do; "le" writes ``uuid.bytes_le``.
    """
    if guid_order not in ("rfc4122", "le"):
        raise ValueError(f"guid_order {guid_order!r}")
    table_size = CertTableEntry.SIZE * (len(certs) + 1)
    head, body = b"", b""
    for name, data in certs.items():
        guid = GUIDS[name] if name in GUIDS else uuid.UUID(name)
        head += CertTableEntry(guid=guid.bytes if guid_order == "rfc4122" else guid.bytes_le,
                               offset=table_size + len(body), length=len(data)).to_bytes()
        body += data
    return head + CertTableEntry().to_bytes() + body


__all__ = ["CertTableEntry", "CertTableError", "GUIDS", "MAX_ENTRIES", "encode_cert_table", "guid_name",
           "parse_cert_table"]
