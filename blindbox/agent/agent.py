"""The agent's launcher, installed in the guest as ``/opt/blindbox/agent.py`` beside the packages.

Run as ``python3.11 -I /opt/blindbox/agent.py --listen ... --app ... --attester ... --state-dir ...
--openssl ...``: isolated mode puts neither the script's directory nor site-packages on
``sys.path``, so this file puts its own directory first and runs :func:`blindbox.agent.__main__.main`.

Part of the attestation agent: it imports only the standard library and the agent itself,
never ``cryptography``, :mod:`builder` or another part of :mod:`blindbox` (docs/architecture.md).
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from blindbox.agent.__main__ import main

    sys.exit(main())
