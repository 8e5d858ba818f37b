"""The agent's command line: ``python -m blindbox.agent`` (or ``/opt/blindbox/agent.py`` in the guest).

    agent --listen 0.0.0.0:8443 --app 127.0.0.1:8080 --attester auto|simulated:HOST:PORT
          --state-dir DIR --openssl /usr/bin/openssl [--runtime-policy /etc/blindbox/runtime-policy.json]

With ``--runtime-policy``, the file must hold a runtime policy in canonical form
(:func:`measure.runtime_policy.parse_canonical`); its SHA-256 is bound into every report and
named in every evidence message, and its ``clients`` list decides who is relayed.  A file
that is missing or not exactly canonical is a REFUSED line: the agent does not start, and the
guest then never starts the application.

Console lines, one each, on standard output (the guest's console):

- ``BLINDBOX-AGENT-READY <listen address> <SHA-256 of the TLS key's SubjectPublicKeyInfo>`` once it
  accepts connections;
- ``BLINDBOX-AGENT-REFUSED <one sentence>`` and exit status 2 when it cannot start (no way to get
  reports, a bad option, no key);
- ``BLINDBOX-AGENT-CONNECTION <peer> <what happened>`` once per connection;
- ``BLINDBOX-AGENT-ERROR <sentence>`` and exit status 1 for a bug.

Part of the attestation agent: it may import only the standard library and :mod:`measure`,
never ``cryptography``, ``click``, :mod:`builder` or another part of :mod:`blindbox`
(docs/architecture.md).  The only module of the agent that writes to the console or exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from measure.errors import BlindboxError, InputError

from .attesters import open_attester
from .server import Agent, load_runtime_policy, make_identity, parse_address

READY = "BLINDBOX-AGENT-READY"
REFUSED = "BLINDBOX-AGENT-REFUSED"
CONNECTION = "BLINDBOX-AGENT-CONNECTION"
ERROR = "BLINDBOX-AGENT-ERROR"

_console = threading.Lock()


def say(marker: str, text: str) -> None:
    line = " ".join(f"{marker} {text}".split())          # one line, whatever the text holds
    with _console:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"the agent's command line is wrong: {message}.")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="blindbox-agent", description="The guest's attestation agent (attested TLS 1.3).")
    p.add_argument("--listen", required=True, help="HOST:PORT to accept attested TLS on (port 0: any)")
    p.add_argument("--app", required=True, help="HOST:PORT of the application on loopback")
    p.add_argument("--attester", default="auto", help="auto, or simulated:HOST:PORT (tests only)")
    p.add_argument("--state-dir", required=True, type=Path, help="where the TLS key lives (a tmpfs)")
    p.add_argument("--openssl", default="/usr/bin/openssl", help="the openssl binary that makes the key")
    p.add_argument("--runtime-policy", type=Path, help="the runtime policy's canonical JSON (bound into reports)")
    p.add_argument("--max-connections", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--hello-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.max_connections < 1 or not 0 < args.hello_timeout <= 600:
            raise InputError("--max-connections must be at least 1 and --hello-timeout from 0 to 600 seconds.")
        listen = parse_address(args.listen, "--listen")
        app = parse_address(args.app, "--app")
        runtime_policy = None if args.runtime_policy is None else load_runtime_policy(args.runtime_policy)
        attester = open_attester(args.attester)
        identity = make_identity(args.openssl, args.state_dir)
        agent = Agent(listen=listen, app=app, attester=attester, identity=identity,
                      log=lambda text: say(CONNECTION, text), max_connections=args.max_connections,
                      hello_timeout=args.hello_timeout, runtime_policy=runtime_policy)
        agent.self_test()
        address = agent.bind()
    except BlindboxError as e:
        say(REFUSED, str(e))
        return 2
    except Exception as e:  # noqa: BLE001 - the agent's one boundary: a bug is reported, with status 1
        say(ERROR, f"this is a bug in the attestation agent: {type(e).__name__}: {e}")
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        agent.close()

    signal.signal(signal.SIGTERM, stop)
    say(READY, f"{address} {identity.spki_sha256}")
    try:
        agent.serve_forever()
    except KeyboardInterrupt:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
