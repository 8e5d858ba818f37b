"""Build reproducible SEV-SNP guest bundles from declarative recipes.

``builder.sources`` fetches and verifies the inputs (Debian packages through a private
apt configuration, sha256-pinned URLs, local files) into a content-addressed cache;
``builder.errors`` holds the build-side exception hierarchy.
"""
