"""Command-line front end: argparse only. Every verb module defines ``register(subparsers)``
which adds its parser and sets ``func`` to a function ``(args) -> int`` that calls the library.

Errors are one line on stderr (``ccbuild: error: ...``), exit 2 for bad input, 1 for a failed
check; a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from builder import __version__
from builder.errors import CCBuildError, EXIT_BAD_INPUT

# One module per verb (or verb group) under builder/cli/. Extend, don't rename.
VERB_MODULES = [
    "builder.cli.build",
    "builder.cli.release",
    "builder.cli.lock",
    "builder.cli.measure",
    "builder.cli.idblock",
    "builder.cli.inspect",
    "builder.cli.boot",
    "builder.cli.verify",
    "builder.cli.kata",
    "builder.cli.explain",
]

# The verb each module of VERB_MODULES registers, so that a command imports only its own verb's
# module (a no-op `ccbuild build` must not pay for cryptography, the Kata model or the
# measurement engines that other verbs import). tests/test_noop.py checks that this names
# exactly what each module's register() adds.
VERB_OF_MODULE = {
    "builder.cli.build": "build",
    "builder.cli.release": "release",
    "builder.cli.lock": "lock",
    "builder.cli.measure": "measure",
    "builder.cli.idblock": "id-block",
    "builder.cli.inspect": "inspect",
    "builder.cli.boot": "boot",
    "builder.cli.verify": "verify",
    "builder.cli.kata": "kata",
    "builder.cli.explain": "explain",
}


class _Parser(argparse.ArgumentParser):
    """argparse with our exit code (2) and one-line errors."""

    def error(self, message: str):  # noqa: D401
        self.exit(EXIT_BAD_INPUT, f"ccbuild: error: {message}; see '{self.prog} --help'\n")


class _Version(argparse.Action):
    """``--version``: ccbuild's version, then each external tool's version line (or 'not found'
    with the Debian package that provides it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from builder.run import found_tools
        lines = [f"ccbuild {__version__}"]
        lines += [f"  {tool:<19} {line}" for tool, line in found_tools()]
        print("\n".join(lines))
        parser.exit(0)


def verb_modules(argv: list[str] | None) -> list[str]:
    """The verb modules a command line needs: the one of its verb when the verb is certain (the
    first argument after the global flags, which take no value), otherwise all of them (help,
    a missing or unknown verb: argparse then lists every verb, as before)."""
    if argv is None:
        return list(VERB_MODULES)
    for a in argv:
        if a == "--":
            break
        if a.startswith("-"):
            continue
        mods = [m for m in VERB_MODULES if VERB_OF_MODULE.get(m) == a]
        return mods if len(mods) == 1 else list(VERB_MODULES)
    return list(VERB_MODULES)


def make_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the verb modules that command line needs are imported
    (:func:`verb_modules`)."""
    p = _Parser(prog="ccbuild", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=_Version, nargs=0,
                   help="show ccbuild's version and the external tools it found, and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="echo external commands")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for name in verb_modules(argv):
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(argv)
    args = parser.parse_args(argv)
    debug = args.debug
    try:
        from builder import log
        log.configure(verbose=args.verbose, debug=debug)
        return int(args.func(args) or 0)
    except CCBuildError as e:
        if debug:
            raise
        print(f"ccbuild: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except MemoryError:
        # Inputs are capped (builder/inputs.py), so this means the caps exceed this machine.
        if debug:
            raise
        print("ccbuild: error: out of memory; an input is larger than this machine can hold "
              "(see the README's input limits)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if debug:
            raise
        print("ccbuild: error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
