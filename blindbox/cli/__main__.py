"""``python -m blindbox.cli``: the same as the ``blindbox`` command.

Part of the command line, which may import every part; no other part imports it
(docs/architecture.md).
"""

from blindbox.cli import main

raise SystemExit(main())
