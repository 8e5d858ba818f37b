"""Build reproducible SEV-SNP guest bundles from declarative recipes.

``builder.sources`` fetches and verifies the inputs (Debian packages through a private
apt configuration, sha256-pinned URLs, local files) into a content-addressed cache;
``builder.errors`` holds the build-side exception hierarchy.

The builder may import the calculator (:mod:`measure`), the auditor's manifest reader and
ID-block signer (:mod:`blindbox.audit`), :mod:`blindbox.files`, ``yaml`` and ``elftools``;
it never imports the command line (:mod:`blindbox.cli`) or ``click``, and neither the
calculator nor the auditor imports it (docs/architecture.md).
"""
