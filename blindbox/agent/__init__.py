"""The attestation agent that runs inside the guest (docs/attested-tls.md).

It creates its TLS key at every boot, obtains SEV-SNP attestation reports whose REPORT_DATA
binds that key and each client's nonce (:mod:`blindbox.agent.attesters`), and serves attested
TLS 1.3 connections that it relays to the application on loopback (:mod:`blindbox.agent.server`).
``python -m blindbox.agent`` (or the launcher ``agent.py`` beside the packages) is its command line.

It runs in the guest under ``python3.11 -I`` with only the interpreter, the calculator and this
package installed: it may import only the standard library and :mod:`measure`, never
``cryptography``, ``yaml``, ``click``, :mod:`builder` or another part of :mod:`blindbox`
(docs/architecture.md).  This ``__init__`` imports nothing.
"""
