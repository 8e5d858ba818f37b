"""A small HTTP service: the application the python-app recipe runs inside the measured guest.

GET /            -> JSON: who and where the service runs (uid, gid, cwd, Python version, GREETING)
GET /sha256?s=X  -> JSON: the SHA-256 of X, computed in the guest
GET /exit?status=N -> answers, then the service stops with exit status N (the guest then powers off)

Standard library only (Debian's python3.11-minimal and libpython3.11-stdlib).
"""

import hashlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PORT = int(os.environ.get("PORT", "8080"))
#: the address to listen on: 127.0.0.1 behind an attestation agent, so only the agent reaches it
HOST = os.environ.get("HOST", "0.0.0.0")
exit_status = 0


class Handler(BaseHTTPRequestHandler):
    server_version = "blindbox-python-app/1"

    def _reply(self, code, body):
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        global exit_status
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/":
            self._reply(200, {"service": "python-app", "uid": os.getuid(), "gid": os.getgid(),
                              "cwd": os.getcwd(), "python": sys.version.split()[0],
                              "greeting": os.environ.get("GREETING")})
        elif url.path == "/sha256":
            text = query.get("s", [""])[0]
            self._reply(200, {"s": text, "sha256": hashlib.sha256(text.encode()).hexdigest()})
        elif url.path == "/exit":
            exit_status = int(query.get("status", ["0"])[0])
            self._reply(200, {"exiting": exit_status})
            threading.Thread(target=self.server.shutdown).start()
        else:
            self._reply(404, {"error": f"no such path {url.path}"})

    def log_message(self, fmt, *args):
        sys.stdout.write(f"python-app: {fmt % args}\n")
        sys.stdout.flush()


def main():
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    sys.stdout.write(f"python-app: listening on {HOST} port {PORT}\n")
    sys.stdout.flush()
    server.serve_forever()
    server.server_close()
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
