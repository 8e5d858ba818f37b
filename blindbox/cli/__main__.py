"""``python -m blindbox.cli``: the same as the ``blindbox`` command."""

from blindbox.cli import main

raise SystemExit(main())
