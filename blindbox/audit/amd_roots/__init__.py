"""AMD's SEV-SNP root (ARK) and intermediate (ASK, ASVK) certificates, one PEM per file.

Trusted only through the SHA-256 fingerprints pinned in :mod:`blindbox.audit.certs`; where they
came from is recorded in docs/auditing.md ("Bundled AMD certificates").

Data of the auditor: this package imports nothing.
"""
