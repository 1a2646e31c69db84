"""`stip` console script: transform a checkpoint for the cloud; inspect a key file safely."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .checkpoint import transform_checkpoint
from .keys import KeySet


def _transform(args: argparse.Namespace) -> int:
    summary = transform_checkpoint(args.model, args.out, args.keys, seed=args.seed)
    print(json.dumps({**summary, "cloud_checkpoint": str(args.out), "keys_dir": str(args.keys)}, indent=2))
    return 0


def _keys(args: argparse.Namespace) -> int:
    keys = KeySet.load(args.file)
    rows = keys.describe()
    print(f"{args.file}: {len(rows)} keys, metadata {json.dumps(keys.metadata, sort_keys=True)}")
    for row in rows:
        print(f"  {row['name']:<28} shape={row['shape']} {row['dtype']} "
              f"{'valid permutation' if row['is_permutation'] else 'NOT A PERMUTATION'}")
    return 0 if all(r["is_permutation"] for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transform", help="transform a saved safetensors checkpoint shard by shard")
    t.add_argument("--model", required=True, help="folder with config.json and *.safetensors")
    t.add_argument("--out", required=True, help="folder for the cloud checkpoint")
    t.add_argument("--keys", required=True, help="folder for developer_keys / user_keys (0600)")
    t.add_argument("--seed", type=int, default=None, help="reproducible keys (default: OS randomness)")
    t.set_defaults(func=_transform)
    k = sub.add_parser("keys", help="inspect a key file: names, shapes, validity (never values)")
    k.add_argument("file")
    k.set_defaults(func=_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"stip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
