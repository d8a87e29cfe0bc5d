"""What the scripts that measure trained bundles share (precision.py, runtimes.py): their command line and the name
each bundle's result is saved under."""

from __future__ import annotations

import argparse
from pathlib import Path


def bundle_parser(description: str, table: str, threads: int | None = None) -> argparse.ArgumentParser:
    """bundles..., --name per bundle, --batch-sizes, --threads, --min-seconds, --min-iters, --table-only."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="*", type=Path, help="trained bundle folders")
    parser.add_argument("--name", action="append", help="result name per bundle (default: the run folder's name)")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=threads, help=f"default: {threads or 'one per CPU core'}")
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--min-iters", type=int, default=10)
    parser.add_argument("--table-only", action="store_true", help=f"only rewrite {table}")
    return parser


def named_bundles(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(result name, bundle) for each bundle to measure; none with --table-only."""
    names = args.name or []
    bundles = [] if args.table_only else args.bundles
    return [(names[i] if i < len(names) else bundle.resolve().parent.name, bundle) for i, bundle in enumerate(bundles)]
