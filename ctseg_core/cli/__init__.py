"""`python -m ctseg_core <command>` (also `ctseg`): argument parsing only; the work is in the library.

Each ``cmd_*.py`` module in this package defines ``register(subparsers)``, which adds its
commands with ``set_defaults(func=...)``; ``func(args) -> int`` is the exit status. A
:class:`~ctseg_core.errors.CtsegError` ends the command with its one-line message and status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from .. import __version__
from ..errors import CtsegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctseg",
        description="Train, evaluate and explore multi-organ CT segmentation (TotalSegmentator layout).",
    )
    parser.add_argument("--version", action="version", version=f"ctseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{module.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CtsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's refusal (a full disk, no permission): not a bug
        if args.verbose:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc} (--verbose shows where)", file=sys.stderr)
        return 2
    except MemoryError as exc:
        if args.verbose:
            raise
        print(
            f"error: out of memory ({exc}); ask for less (smaller sizes, batches)", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
