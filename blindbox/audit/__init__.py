"""The auditor: everything that checks what a publisher or a guest claims.

Attestation reports and their signatures, AMD certificate chains and the KDS, ID blocks,
manifest signatures, the one reader of ``manifest.json``, re-derivation of a bundle's
published values, and the search for the launch behind a measurement.

It may use the calculator (:mod:`measure`) and :mod:`blindbox.files`; it never imports
the builder or the command line, and the calculator never imports it.
"""
