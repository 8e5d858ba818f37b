"""``python -m tests.integration.tcprelay PORT``: relay standard input and output to 127.0.0.1:PORT.

QEMU runs it per guest connection for a ``guestfwd=...-cmd:`` rule (builder.boot.nic_argument), so
a guest destination such as 10.0.2.101:5001 leads to a test server on the host's loopback only.
"""

from __future__ import annotations

import os
import select
import socket
import sys


def main(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.settimeout(None)
        ends = [0, s.fileno()]
        while ends:
            ready, _, _ = select.select(ends, [], [], 60)
            if not ready:
                return 1
            for fd in ready:
                data = os.read(fd, 65536) if fd == 0 else s.recv(65536)
                if fd == 0:
                    if not data:
                        s.shutdown(socket.SHUT_WR)
                        ends.remove(0)
                    else:
                        s.sendall(data)
                elif not data:
                    return 0
                else:
                    os.write(1, data)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
