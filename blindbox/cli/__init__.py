"""Entry point of the ``blindbox`` command.

Exit status everywhere: 0 success, 1 internal error (a bug), 2 bad input or an
unsupported combination, 3 a verification or comparison failed.  Subcommands live in
``blindbox.cli.*`` and are imported only when used.

The command line may import every part (:mod:`measure`, :mod:`blindbox.audit`,
:mod:`builder`, :mod:`blindbox.files`) and is the only layer that prints or exits; no part
imports it (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from measure.errors import BlindboxError

#: command name -> "module:attribute"
COMMANDS = {
    "measure": "blindbox.cli.measure:measure",
    "explain-vmsa": "blindbox.cli.measure:explain_vmsa",
    "measure-diff": "blindbox.cli.measure_diff:measure_diff",
    "explain-report": "blindbox.cli.explain:explain_report",
    "rederive": "blindbox.cli.explain:rederive_cmd",
    "fetch": "blindbox.cli.fetch:fetch",
    "build": "blindbox.cli.build:build",
    "lock": "blindbox.cli.build:lock",
    "check-repro": "blindbox.cli.build:check_repro",
    "vendor": "blindbox.cli.build:vendor",
    "verify-report": "blindbox.cli.audit:verify_report_cmd",
    "id-block": "blindbox.cli.audit:id_block_cmd",
    "sign-manifest": "blindbox.cli.audit:sign_manifest_cmd",
    "verify-manifest": "blindbox.cli.audit:verify_manifest_cmd",
    "connect": "blindbox.cli.connect:connect",
    "show-policy": "blindbox.cli.policy:show_policy",
    "client-key": "blindbox.cli.policy:client_key",
}


def main(argv=None) -> int:
    """Run the ``blindbox`` command with ``argv`` (default: the process's) and return its exit status.

    ``blindbox measure`` and ``blindbox build`` in their usual forms are parsed with the standard
    library and never import click (blindbox.cli.measure_core, blindbox.cli.build_core); everything
    else goes through click.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["measure"]:
        from .measure_core import fast_options, run
        options = fast_options(args[1:])
        if options is not None:
            return _fast(lambda: run(**options))
    if args[:1] == ["build"]:    # its usual form (a no-op rebuild in CI, above all) without click too
        from . import build_core
        build_options = build_core.fast_options(args[1:])
        if build_options is not None:
            return _fast(lambda: build_core.run(**build_options))
    return _with_click(argv)


def _fast(work: Callable[[], str]) -> int:
    """Run a command parsed without click, with the output, statuses and messages :func:`_with_click` gives."""
    try:
        text = work()
        if "\x1b" in text:
            # An escape sequence (from a path, say): click.echo strips it when stdout is no terminal.
            import click

            click.echo(text)
        else:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        return 0
    except (EOFError, KeyboardInterrupt):
        # What click does with them: a blank line on stderr, then "aborted".
        return _with_click(None, aborted=True)
    except BrokenPipeError:
        # As click does: stop writing to the closed pipe, so exiting does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except BaseException as e:  # noqa: BLE001 - reported exactly as in the click path below
        return _with_click(None, error=e)


def _with_click(argv, *, error: BaseException | None = None, aborted: bool = False) -> int:
    import click

    try:
        if aborted:
            click.echo(file=sys.stderr)
            raise click.exceptions.Abort()
        if error is not None:
            raise error
        # Without standalone mode click returns the code of a click.exceptions.Exit
        # (e.g. a comparison that failed, 3) and None after a normal return.
        rc = _group().main(args=argv, prog_name="blindbox", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        # One line, like every other error: click's own message, then where to read more.
        message = " ".join(e.format_message().split()).rstrip(".")
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "blindbox"
        click.echo(f"blindbox: error: {message}; see '{where} --help'.", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("blindbox: aborted.", err=True)
        return 1
    except BlindboxError as e:
        click.echo(f"blindbox: error: {e}", err=True)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        click.echo("blindbox: interrupted.", err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into exit 1
        if os.environ.get("BLINDBOX_DEBUG"):
            import traceback
            traceback.print_exc()
        click.echo(f"blindbox: internal error ({type(e).__name__}: {e}). This is a bug in blindbox, "
                   f"not in your input; please report it with the command line you ran "
                   f"(BLINDBOX_DEBUG=1 shows the traceback).", err=True)
        return 1


def _group() -> Any:
    """The click group of every command (click is imported only when it is needed)."""
    import click

    from measure import __version__

    class LazyGroup(click.Group):
        def list_commands(self, ctx):
            return sorted(COMMANDS)

        def get_command(self, ctx, name):
            target = COMMANDS.get(name)
            if target is None:
                return None
            module, attr = target.split(":")
            return getattr(importlib.import_module(module), attr)

    @click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="blindbox")
    def cli():
        """Build reproducible AMD SEV-SNP guests and compute their launch digests."""

    return cli
