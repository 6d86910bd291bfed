"""The ``fastdata`` command.

Each sub-command lives in the module that does the work; that module exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a function taking the
parsed arguments and returning an exit code. This file only lists the modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that provide sub-commands, in the order ``fastdata --help`` lists them.
COMMAND_MODULES = [
    "fastdata.convert",
    "fastdata.verify",
    "fastdata.sample_data",
    "fastdata.train",
]


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="fastdata", description="Fast PyTorch input pipelines: shards, loader, transforms."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``fastdata`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
