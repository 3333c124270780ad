"""The ``histokd`` command line: one module per sub-command, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from histokd_core import __version__
from histokd_core.errors import HistoKDError

#: Sub-command modules under ``histokd_core.cli``; each defines
#: ``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``.
COMMANDS: tuple[str, ...] = ("demo", "tile", "extract", "train", "predict", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histokd",
        description="Multimodal knowledge distillation for whole-slide images.",
    )
    parser.add_argument("--version", action="version", version=f"histokd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"histokd_core.cli.{name}")
        module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args._run(args) or 0)
    except HistoKDError as exc:
        print(f"histokd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"histokd {args.command}: interrupted", file=sys.stderr)
        return 130
