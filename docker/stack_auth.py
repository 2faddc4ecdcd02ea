"""Who may do what on the stack: the generated secrets and each service's accounts (docker/stack.py).

Every credential is generated on the first `up` into $STACK_DIR/secrets (mode 600; a key missing from
an older file is added) and reaches a server through a mode-600 file or its environment, never its
command line (`ps` shows that to every user):

- PostgreSQL: one password (scram-sha-256, pg_hba.conf allows nothing else) for the stack's user.
- MLflow (its basic-auth app, users and grants in the `STACK_MLFLOW_AUTH_DB` database):
  `admin` (manages users), `pipeline` (the stages, flows and workers: logs runs, registers, moves
  @champion as `register` does), `release` (may move @champion or roll it back: edit on every
  registered model, read elsewhere) and `viewer` (read only: any write is refused with 403).
- Prefect: one API auth string (`PREFECT_SERVER_API_AUTH_STRING` on the server, `PREFECT_API_AUTH_STRING`
  on clients and workers); Prefect 3 has no roles.
- SeaweedFS S3: an identity per purpose (`mlflow-artifacts`: the mlflow bucket, used by the MLflow server
  only; `dvc`: read/write on the dvc bucket, for the project and the workers; `reader`: read only on the
  dvc bucket, for hosts that only pull data; `admin`: the stack's own upkeep and backups); anonymous
  requests are refused.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

# MLflow accounts: name -> (secret holding its password, grants beyond the default READ)
MLFLOW_ACCOUNTS = {
    "admin": ("MLFLOW_ADMIN_PASSWORD", "admin"),
    "pipeline": ("MLFLOW_PIPELINE_PASSWORD", {"experiment": "EDIT", "registered_model": "EDIT"}),
    "release": ("MLFLOW_RELEASE_PASSWORD", {"registered_model": "EDIT"}),
    "viewer": ("MLFLOW_VIEWER_PASSWORD", {}),
}
# S3 identities: name -> (secret names of its key pair, actions, bucket settings they apply to)
S3_IDENTITIES = {
    "admin": (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("Admin", "Read", "List", "Tagging", "Write"), ()),
    "mlflow-artifacts": (("S3_MLFLOW_ACCESS_KEY_ID", "S3_MLFLOW_SECRET_ACCESS_KEY"), ("Read", "List", "Tagging", "Write"),
                         ("STACK_MLFLOW_BUCKET",)),
    "dvc": (("S3_DVC_ACCESS_KEY_ID", "S3_DVC_SECRET_ACCESS_KEY"), ("Read", "List", "Tagging", "Write"),
            ("STACK_DVC_BUCKET",)),
    "reader": (("S3_READER_ACCESS_KEY_ID", "S3_READER_SECRET_ACCESS_KEY"), ("Read", "List"), ("STACK_DVC_BUCKET",)),
}


def fresh_secrets() -> dict[str, str]:
    """One new value for every secret the stack uses (S3 admin keys from the environment if set there)."""
    values = {"POSTGRES_PASSWORD": secrets.token_hex(16),
              "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "stack-" + secrets.token_hex(6)),
              "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", secrets.token_hex(20)),
              "PREFECT_AUTH_STRING": "oralscan:" + secrets.token_hex(16),
              "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}  # signs the MLflow UI's CSRF tokens
    for name, ((key_id, secret), _, _) in S3_IDENTITIES.items():
        if name != "admin":
            values[key_id], values[secret] = f"{name}-{secrets.token_hex(6)}", secrets.token_hex(20)
    for name, (password, _) in MLFLOW_ACCOUNTS.items():
        values[password] = secrets.token_urlsafe(18)
    return values


def write_private(path: Path, text: str) -> None:
    """A file only its owner may read, mode 600 before the first byte is written."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def stack_secrets(d: Path, read_env_file) -> dict[str, str]:
    """$STACK_DIR/secrets: generated once; keys a newer launcher needs are added, none is ever changed."""
    path = d / "secrets"
    known = read_env_file(path) if path.exists() else {}
    missing = {k: v for k, v in fresh_secrets().items() if k not in known}
    if missing:
        write_private(path, "".join(f"{k}={v}\n" for k, v in {**known, **missing}.items()))
    path.chmod(0o600)
    return read_env_file(path)


def s3_config(s: dict, sec: dict) -> dict:
    """SeaweedFS's S3 identities: a key pair and the actions it may take (on one bucket, or all for admin)."""
    identities = []
    for name, ((key_id, secret), actions, buckets) in S3_IDENTITIES.items():
        scoped = [f"{a}:{s[b]}" for a in actions for b in buckets] if buckets else list(actions)
        identities.append({"name": name, "credentials": [{"accessKey": sec[key_id], "secretKey": sec[secret]}],
                           "actions": scoped})
    return {"identities": identities}


def write_s3_config(s: dict, d: Path, sec: dict) -> Path:
    path = d / "s3.json"
    write_private(path, json.dumps(s3_config(s, sec), indent=2))
    return path


def s3_keys(sec: dict, identity: str) -> dict[str, str]:
    """One identity's keys as boto3 and the AWS CLI read them from the environment."""
    key_id, secret = S3_IDENTITIES[identity][0]
    return {"AWS_ACCESS_KEY_ID": sec[key_id], "AWS_SECRET_ACCESS_KEY": sec[secret]}


def write_mlflow_auth_ini(d: Path, auth_db_url: str, sec: dict) -> Path:
    """The basic-auth app's settings (MLFLOW_AUTH_CONFIG_PATH): users in PostgreSQL, READ by default."""
    path = d / "mlflow-auth.ini"
    write_private(path, "[mlflow]\ndefault_permission = READ\n"
                        f"database_uri = {auth_db_url}\nadmin_username = admin\n"
                        f"admin_password = {sec['MLFLOW_ADMIN_PASSWORD']}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def ensure_mlflow_accounts(auth_db_url: str, sec: dict) -> None:
    """Every account with its current password and grants, written to the auth database directly (before
    the server starts, so also after a restore brought another stack's users)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(auth_db_url)  # creates or migrates the auth tables
    for user, (password, grants) in MLFLOW_ACCOUNTS.items():
        admin = grants == "admin"
        if store.has_user(user, use_primary=True):
            store.update_user(user, password=sec[password], is_admin=admin)
        else:
            store.create_user(user, sec[password], is_admin=admin)
        for resource, permission in ({} if admin else grants).items():
            store.grant_user_permission(user, resource, "*", permission)
