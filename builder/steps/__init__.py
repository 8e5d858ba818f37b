"""Build stages that turn verified inputs into guest bundle parts.

Each module is one stage with explicit arguments (paths, lists, ints) and a return
value (bytes or a frozen dataclass); none reads a recipe, prints or exits:

- :mod:`.cpio`    deterministic cpio "newc" archives and their fixed-parameter compression
- :mod:`.deflate` the initrd's deflate compressor: the zlib the lock pins, loaded by path
- :mod:`.kernel`  a Debian kernel package: release, bzImage, config preflight, module closure
- :mod:`.elf`     shared-library closure of dynamically linked ELF binaries
- :mod:`.init`    the default ``/init`` script and the marker lines it prints
- :mod:`.initrd`  the initrd: busybox, init, modules, files and binaries with their libraries

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""
