"""Local stand-ins for Debian's archive and its snapshot archive, served on 127.0.0.1.

:func:`serve` runs an http.server in a thread that answers exact paths from a table and
404 for everything else, and records every path asked for.  :func:`sid_archive_routes`
is a Debian archive that serves sid's real, signed package index (the ``InRelease`` and
``Packages`` files from the test archive's private apt tree, so apt verifies them against
the Debian keyring as usual) and no pool file at all: an archive that has dropped every
package file.  :func:`snapshot_routes` lays files out as snapshot.debian.org does.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests import realinputs

Body = bytes | Path


@dataclass
class Served:
    base: str
    routes: dict[str, Body]
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serve(routes: dict[str, Body]) -> Iterator[Served]:
    """Serve ``routes`` (path -> bytes or file) on 127.0.0.1 until the block ends."""
    served = Served("", routes)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            served.requests.append(self.path)
            body = served.routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            data = body.read_bytes() if isinstance(body, Path) else body
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


def sid_archive_routes(prefix: str = "/debian") -> dict[str, Body]:
    """sid's signed InRelease and its amd64 Packages index (from the test archive's apt tree), nothing else."""
    archive = realinputs.archive()
    archive.served_versions("ovmf-amdsev", "sid")          # the lists exist (fetched once, then cached)
    lists = archive.apt_dir / "sid-amd64" / "lists"
    inrelease = next(lists.glob("*_dists_sid_InRelease"))
    packages = next(lists.glob("*_dists_sid_main_binary-amd64_Packages"))
    digest = hashlib.sha256(packages.read_bytes()).hexdigest()
    where = f"{prefix}/dists/sid/main/binary-amd64"
    return {f"{prefix}/dists/sid/InRelease": inrelease, f"{where}/Packages": packages,
            f"{where}/by-hash/SHA256/{digest}": packages}


def snapshot_routes(timestamp: str, files: dict[str, Body], archive: str = "debian") -> dict[str, Body]:
    """``files`` (pool path -> bytes) where a snapshot archive serves them at ``timestamp``."""
    return {f"/archive/{archive}/{timestamp}/{pool}": body for pool, body in files.items()}
