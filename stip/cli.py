"""`stip` console script: transform a checkpoint for the cloud; inspect key files safely."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from .checkpoint import transform_checkpoint
from .keys import DEVELOPER_KEYS_FILE, USER_KEYS_FILE, KeySet

# Errors a user can cause and fix; anything else is a bug and says so (still on one line).
USER_ERRORS = (ValueError, OSError, EOFError)


def _transform(args: argparse.Namespace) -> int:
    summary = transform_checkpoint(args.model, args.out, args.keys, seed=args.seed, force=args.force)
    print(json.dumps({**summary, "cloud_checkpoint": str(args.out), "keys_dir": str(args.keys)}, indent=2))
    return 0


def _natural(name: str) -> list:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def key_files(path: Path) -> list[Path]:
    """The key file itself, or the developer/user key files in a folder."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no key file or folder at {path}; create keys with `stip transform`")
    found = [path / name for name in (DEVELOPER_KEYS_FILE, USER_KEYS_FILE) if (path / name).is_file()]
    if not found:
        raise FileNotFoundError(f"{path} holds neither {DEVELOPER_KEYS_FILE} nor {USER_KEYS_FILE}; "
                                "pass the --keys folder of `stip transform`")
    return found


def _keys(args: argparse.Namespace) -> int:
    ok = True
    for path in key_files(Path(args.path)):
        keys = KeySet.load(path)
        rows = sorted(keys.describe(), key=lambda row: _natural(row["name"]))
        print(f"{path}: {len(rows)} keys, metadata {json.dumps(keys.metadata, sort_keys=True)}")
        for row in rows:
            print(f"  {row['name']:<28} shape={row['shape']} {row['dtype']} "
                  f"{'valid permutation' if row['is_permutation'] else 'NOT A PERMUTATION'}")
        ok &= all(r["is_permutation"] for r in rows)
    return 0 if ok else 1


def _device_package(args: argparse.Namespace) -> int:
    from .device_package import package_from_folders  # noqa: PLC0415 - keeps `stip keys` light

    out = package_from_folders(args.model, args.keys, args.out, force=args.force)
    print(json.dumps({"device_package": str(out), "load_with": f"stip.load_device_package({str(out)!r})"}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stip", description=__doc__)
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transform", help="transform a saved safetensors checkpoint tensor by tensor")
    t.add_argument("--model", required=True, help="folder with config.json and *.safetensors")
    t.add_argument("--out", required=True, help="empty folder for the cloud checkpoint")
    t.add_argument("--keys", required=True, help="folder (outside --out) for developer_keys / user_keys (0600)")
    t.add_argument("--seed", type=int, default=None, help="reproducible keys (default: OS randomness)")
    t.add_argument("--force", action="store_true",
                   help="reuse a non-empty --out (its weight and index files are deleted first) "
                        "and overwrite key files")
    t.set_defaults(func=_transform)
    d = sub.add_parser("device-package", help="the user's device: embedding module + user keys, in one folder")
    d.add_argument("--model", required=True, help="the ORIGINAL save_pretrained folder (the one given to transform)")
    d.add_argument("--keys", required=True, help="the --keys folder of `stip transform` (user_keys.safetensors)")
    d.add_argument("--out", required=True, help="empty folder for the package")
    d.add_argument("--force", action="store_true", help="replace a non-empty --out")
    d.set_defaults(func=_device_package)
    k = sub.add_parser("keys", help="inspect key files: names, shapes, validity, metadata (never values)")
    k.add_argument("path", help="a key file, or a --keys folder")
    k.set_defaults(func=_keys)
    return parser


def one_line(err: BaseException) -> str:
    """An error message on one line (transformers' messages span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if args.traceback:
            raise
        print(f"stip {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: still one line, with the way to see more
        if args.traceback:
            raise
        print(f"stip {args.command}: internal error ({type(err).__name__}): {one_line(err)}; "
              "rerun with `stip --traceback ...` and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
