"""The ``blindbox`` namespace: the auditor, the command line, and the file writing they share.

:mod:`blindbox.audit` checks reports, certificates and published bundles;
:mod:`blindbox.cli` is the ``blindbox`` command, the only layer that prints or exits;
:mod:`blindbox.files` writes output files atomically for every part.  This package imports
nothing, so importing one of its parts loads no other (docs/architecture.md).
"""
