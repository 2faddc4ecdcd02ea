"""python -m clinic: accounts and the server of the clinic's page.

    python -m clinic users add NAME --role viewer|clinician|admin   # the password is read from standard input
    python -m clinic users list
    python -m clinic users remove NAME
    python -m clinic serve [--host H --port P]                        # default clinic.host:clinic.port (params.yaml)
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from clinic import accounts
from pipeline import project


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clinic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="the project (default: the one around the working directory)")
    sub = parser.add_subparsers(dest="command", required=True)
    users = sub.add_parser("users", help="accounts").add_subparsers(dest="action", required=True)
    add = users.add_parser("add", help="create a user or change one's role and password (password on stdin)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=accounts.ROLES)
    users.add_parser("list", help="names and roles")
    users.add_parser("remove", help="delete a user").add_argument("name")
    serve_parser = sub.add_parser("serve", help="start the clinic's page")
    serve_parser.add_argument("--host", help="default: clinic.host (the stack passes its own)")
    serve_parser.add_argument("--port", type=int, help="default: clinic.port")
    return parser


def read_password() -> str:
    """From a terminal: asked twice, not echoed; from a pipe: its first line."""
    if sys.stdin.isatty():
        first, second = getpass.getpass("password: "), getpass.getpass("again: ")
        if first != second:
            raise accounts.AccountError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: list[str] | None = None) -> None:
    from pipeline.params import load_params

    args = _parser().parse_args(argv)
    root = (args.root or project.root()).resolve()
    settings = load_params(root / "params.yaml").clinic
    db = root / settings.accounts
    try:
        if args.command == "serve":
            serve(root, settings, args.host or settings.host, args.port or settings.port)
        elif args.action == "add":
            accounts.add_user(db, args.name, args.role, read_password())
            print(f"clinic: {args.name} is a {args.role} ({db})")
        elif args.action == "list":
            print("\n".join(f"{n}\t{r}" for n, r in accounts.users(db)) or "no users yet")
        elif not accounts.remove_user(db, args.name):
            raise accounts.AccountError(f"no user {args.name!r}")
        else:
            print(f"clinic: {args.name} removed")
    except accounts.AccountError as err:
        raise SystemExit(f"clinic: {err}") from None


def serve(root: Path, settings, host: str, port: int) -> None:
    import uvicorn

    from clinic.app import create_app
    from pipeline.console import quiet

    quiet(tensorflow=True)
    if not accounts.users(root / settings.accounts):
        print("clinic: no accounts yet: python -m clinic users add NAME --role admin", file=sys.stderr)
    print(f"clinic: http://{host}:{port}/", file=sys.stderr)
    os.chdir(root)  # MLflow's default store (no server configured) is the project's mlflow.db
    # behind the stack's TLS front (nginx on the same host) requests arrive with X-Forwarded-Proto https:
    # trusted from loopback only, so the session cookie is marked Secure there
    uvicorn.run(create_app(root), host=host, port=port, log_level="warning", proxy_headers=True,
                forwarded_allow_ips="127.0.0.1")


if __name__ == "__main__":
    main()
