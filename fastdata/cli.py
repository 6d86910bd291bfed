"""The ``fastdata`` command.

Each sub-command lives in the module that does the work; that module exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a function taking the
parsed arguments and returning an exit code. This file only maps command names to modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command name -> the module that provides it, in the order ``fastdata --help`` lists them.
# Only the module of the command being run is imported (``--help`` imports them all).
COMMANDS = {
    "convert": "fastdata.convert.command",
    "verify": "fastdata.shards.verify",
    "index": "fastdata.shards.indexing",
    "sample-data": "fastdata.tools.sample_data",
    "train": "fastdata.train.command",
    "train-lm": "fastdata.train.lm_command",
    "show": "fastdata.pictures.gallery",
    "stats": "fastdata.pictures.gallery",
    "bench": "fastdata.tools.workloads",
    "demo": "fastdata.tools.demo",
}
# Kept for modules that register themselves by module name.
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Builds the argument parser: with only ``command``'s module when given, else all."""
    parser = argparse.ArgumentParser(
        prog="fastdata", description="Fast PyTorch input pipelines: shards, loader, transforms."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES
    for name in dict.fromkeys(modules):
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``fastdata`` command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
