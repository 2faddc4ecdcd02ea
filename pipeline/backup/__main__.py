"""python -m pipeline.backup create | verify | restore: see pipeline/backup/__init__.py."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import project
from pipeline.backup import BackupError, archive


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(prog="python -m pipeline.backup", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = cli.add_subparsers(dest="command", required=True)
    make = sub.add_parser("create", help="a dated backup folder")
    make.add_argument("--to", type=Path, help="folder that receives backup-<time>/ (default: backups/ in the project; "
                                               "copy it to another disk, or point --to there)")
    make.add_argument("--allow-missing", action="store_true", help="back up even when DVC objects are missing")
    sub.add_parser("verify", help="check every checksum").add_argument("folder", type=Path)
    back = sub.add_parser("restore", help="into this (fresh) clone")
    back.add_argument("folder", type=Path)
    back.add_argument("--force", action="store_true", help="replace an existing store, ledger and labels")
    args = cli.parse_args(argv)
    root = project.root()
    try:
        if args.command == "create":
            folder = archive.create(root, (args.to or root / "backups").resolve(), args.allow_missing)
            manifest = archive.verify(folder)
            print(f"backup: {folder} ({sum(1 for _ in folder.rglob('*'))} files; {len(manifest['data']['versions'])} "
                  f"data versions, {manifest['data']['objects']} DVC objects; store: {manifest['store']['kind']})")
        elif args.command == "verify":
            manifest = archive.verify(args.folder)
            print(f"backup: {args.folder} is intact (made {manifest['created']} from {manifest['project_root']})")
        else:
            for note in archive.restore(root, args.folder.resolve(), args.force):
                print(f"restore: {note}")
    except BackupError as err:
        raise SystemExit(f"backup {args.command}: {err}") from None


if __name__ == "__main__":
    main()
