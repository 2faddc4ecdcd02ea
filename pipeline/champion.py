"""champion: moving `@champion` safely, on the record, and back again.

MLflow keeps one row per alias and overwrites it on a move: no history, no lock, no undo. This
module keeps all three in the registry itself, so they live with the MLflow store (SQLite or
PostgreSQL) and outlast any checkout of the project:
- a mutex: the registered model `<name>.lock`, whose creation is atomic (names are unique);
- compare-and-set: under the mutex, @champion moves only if it is still the version the
  decision was made against;
- history: one registered-model tag `champion_history.<seq>` (JSON) per decision;
- the decided version's own tags `decision` and `reason`.

    python -m pipeline.champion history | status | rollback --to V --reason T | approve V | reject V --reason T
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

HISTORY_PREFIX = "champion_history."
FIELDS = ("seq", "time", "actor", "alias", "old", "new", "moved", "decision", "reason", "data_version")
DECISIONS = ("pending", "champion", "challenger", "awaiting_approval", "rejected")
# MLflow checks registry tag values against 100 000 characters client side, but its SQL schema
# stores registered-model tag values as VARCHAR(5000): PostgreSQL refuses anything longer.
TAG_VALUE_LIMIT = 5000


class ChampionMoved(RuntimeError):
    """Compare-and-set failed: the alias is not what the decision was made against."""


class RegistryBusy(RuntimeError):
    """Another process holds the registry lock longer than we may wait."""


def actor() -> str:
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{socket.gethostname() or 'host'}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _v(version) -> str | None:
    return None if version in (None, "") else str(version)


def _label(version) -> str:
    return "unset" if version is None else f"v{version}"


def _code(err: Exception) -> str:
    return str(getattr(err, "error_code", ""))


def _model(client, name: str):
    """The registered model, or None when there is none by that name."""
    try:
        return client.get_registered_model(name)
    except Exception as err:
        if _code(err) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _existing(client, name: str, version, ready: bool = False):
    try:
        found = client.get_model_version(name, str(version))
    except Exception as err:
        if _code(err) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ValueError(f"{name} v{version} does not exist (or was deleted)") from None
        raise
    if ready and found.status != "READY":
        raise ValueError(f"{name} v{version} is {found.status}, not READY: it cannot serve")
    return found


def alias_version(client, name: str, alias: str = "champion") -> str | None:
    model = _model(client, name)
    return _v(model.aliases.get(alias)) if model else None


# --- the lock ---------------------------------------------------------------------------------

def _create(client, model_name: str, tags: dict, description: str) -> bool:
    """Create a registered model; False when the name is taken (the atomic step of the lock)."""
    try:
        client.create_registered_model(model_name, tags=tags, description=description)
        return True
    except Exception as err:
        if _code(err) == "RESOURCE_ALREADY_EXISTS":
            return False
        raise


def _break_if_stale(client, lock_name: str, lock, stale_seconds: float) -> bool:
    """Delete a lock older than stale_seconds (its holder was killed). Only the waiter that creates
    the break marker of this very lock deletes it, so two waiters never both break it, and a late
    one never deletes the fresh lock the other has just taken."""
    if time.time() - lock.creation_timestamp / 1000 < stale_seconds:
        return False
    token = lock.tags.get("token", str(lock.creation_timestamp))
    marker = f"{lock_name}.break.{token}"
    if not _create(client, marker, {"breaking": token}, f"breaking the stale lock {lock_name}"):
        return False
    try:
        now = _model(client, lock_name)
        if now is not None and now.tags.get("token", str(now.creation_timestamp)) == token:
            log.warning("breaking the stale lock %s held by %s since %s", lock_name,
                        lock.tags.get("holder", "?"), lock.tags.get("since", "?"))
            client.delete_registered_model(lock_name)
    finally:
        client.delete_registered_model(marker)
    return True


def _release(client, lock_name: str, token: str) -> None:
    try:
        lock = _model(client, lock_name)
        if lock is not None and lock.tags.get("token") == token:
            client.delete_registered_model(lock_name)
        else:
            log.warning("%s was broken as stale while we held it", lock_name)
    except Exception as err:  # cleanup must not hide the real outcome; the lock goes stale instead
        log.warning("could not release %s (%s); it counts as stale later", lock_name, err)


@contextmanager
def registry_lock(client, name: str, holder: str, wait_seconds: float, stale_seconds: float = 900):
    """A mutex in the registry, across processes and machines: the registered model `<name>.lock`."""
    lock_name, token = f"{name}.lock", uuid.uuid4().hex
    tags = {"holder": holder, "token": token, "since": _now(), "host": socket.gethostname(), "pid": str(os.getpid())}
    description = f"{holder} is changing @champion of {name}; delete this model only if that process is gone"
    deadline = time.monotonic() + wait_seconds
    while not _create(client, lock_name, tags, description):
        lock = _model(client, lock_name)
        if lock is None or _break_if_stale(client, lock_name, lock, stale_seconds):
            continue  # released or broken meanwhile: try again at once
        if time.monotonic() >= deadline:
            raise RegistryBusy(f"{name} is locked by {lock.tags.get('holder', '?')} since "
                               f"{lock.tags.get('since', '?')}; gave up after {wait_seconds:g} s (if that "
                               f"process is gone, delete the registered model {lock_name!r})")
        time.sleep(min(random.uniform(0.1, 0.4), max(deadline - time.monotonic(), 0.05)))
    try:
        yield {"lock": lock_name, **tags}
    finally:
        _release(client, lock_name, token)


# --- history ----------------------------------------------------------------------------------

def history(client, name: str) -> list[dict]:
    model = _model(client, name)
    tags = model.tags if model else {}
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_PREFIX))]


def _fit(event: dict) -> str:
    """The event as JSON within TAG_VALUE_LIMIT, shortening the reason if it must."""
    value = json.dumps(event, ensure_ascii=False)
    if len(value) <= TAG_VALUE_LIMIT:
        return value
    room = TAG_VALUE_LIMIT - len(json.dumps({**event, "reason": "…"}, ensure_ascii=False))
    if room < 0:
        raise ValueError(f"history event {event['seq']} is too long even without its reason")
    keep, used = 0, 0
    for char in event["reason"]:  # escaped length: a newline or a quote takes two characters
        used += len(json.dumps(char, ensure_ascii=False)) - 2
        if used > room:
            break
        keep += 1
    event["reason"] = event["reason"][:keep] + "…"
    return json.dumps(event, ensure_ascii=False)


def record(client, name: str, event: dict) -> dict:
    """Append one event to the history (assigns seq and time). Call only while holding the lock."""
    model = _model(client, name)
    if model is None:
        raise ValueError(f"no registered model {name!r} to record a decision for")
    tags = model.tags
    seq = max((int(k[len(HISTORY_PREFIX):]) for k in tags if k.startswith(HISTORY_PREFIX)), default=0) + 1
    full = {"actor": "", "alias": None, "old": None, "new": None, "moved": False, "decision": "",
            "reason": "", "data_version": "", **event, "seq": seq, "time": _now()}
    full = {k: full[k] for k in FIELDS}
    full["old"], full["new"], full["moved"] = _v(full["old"]), _v(full["new"]), bool(full["moved"])
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{seq:06d}", _fit(full))
    return full


def _tag_version(client, name: str, version: str, decision: str, reason: str) -> None:
    client.set_model_version_tag(name, version, "decision", decision)
    client.set_model_version_tag(name, version, "reason", reason[:TAG_VALUE_LIMIT])


def _move(client, name, alias, found, expected, check, actor, decision, tag_decision, reason, data_version):
    """The locked part of every alias change: compare, set, record, tag."""
    version, old = str(found.version), alias_version(client, name, alias)
    if check and old != _v(expected):
        raise ChampionMoved(f"@{alias} is {_label(old)}, not {_label(_v(expected))} that this decision "
                            "was made against; nothing moved")
    if old != version:
        client.set_registered_model_alias(name, alias, version)
    event = record(client, name, {"actor": actor, "alias": alias, "old": old, "new": version,
                                  "moved": old != version, "decision": decision, "reason": reason,
                                  "data_version": data_version})
    if old != version or found.tags.get("decision") != tag_decision:  # a kept version keeps the reason it won by
        _tag_version(client, name, version, tag_decision, reason)
    return event


def _check_decision(decision: str) -> None:
    if decision not in DECISIONS:
        raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")


def move_alias(client, name, alias, version, expected, actor, decision, reason, data_version="",
               wait_seconds=60) -> dict:
    """Point @alias at version; for @champion only if it is still `expected` (else ChampionMoved)."""
    _check_decision(decision)
    with registry_lock(client, name, actor, wait_seconds):
        found = _existing(client, name, version, ready=alias == "champion")
        return _move(client, name, alias, found, expected, alias == "champion", actor, decision, decision,
                     reason, data_version)


def record_decision(client, name, version, actor, decision, reason, data_version="", wait_seconds=60) -> dict:
    """A decision that moves no alias (e.g. awaiting_approval), recorded against the current champion."""
    _check_decision(decision)
    with registry_lock(client, name, actor, wait_seconds):
        version = str(_existing(client, name, version).version)
        event = record(client, name, {"actor": actor, "alias": "champion", "old": alias_version(client, name),
                                      "new": version, "moved": False, "decision": decision, "reason": reason,
                                      "data_version": data_version})
        _tag_version(client, name, version, decision, reason)
        return event


def rollback(client, name, to, reason, actor, wait_seconds=60) -> dict:
    with registry_lock(client, name, actor, wait_seconds):
        found = _existing(client, name, to, ready=True)
        return _move(client, name, "champion", found, None, False, actor, "rollback", "champion",
                     f"rolled back by {actor}: {reason}", found.tags.get("data_version", ""))


def _awaiting(client, name, version):
    found = _existing(client, name, version, ready=True)
    if found.tags.get("decision") != "awaiting_approval":
        raise ValueError(f"{name} v{version} is not awaiting approval (decision={found.tags.get('decision')})")
    return found


def approve(client, name, version, actor, note="", wait_seconds=60) -> dict:
    """@champion to a version awaiting approval, if the champion is still the one it was compared with."""
    with registry_lock(client, name, actor, wait_seconds):
        found = _awaiting(client, name, version)
        if "compared_against" not in found.tags:
            raise ValueError(f"{name} v{version} has no compared_against tag: unknown which champion it beat")
        return _move(client, name, "champion", found, found.tags["compared_against"], True, actor, "approved",
                     "champion", f"approved by {actor}: {note}" if note else f"approved by {actor}",
                     found.tags.get("data_version", ""))


def reject(client, name, version, actor, reason, wait_seconds=60) -> dict:
    with registry_lock(client, name, actor, wait_seconds):
        found = _awaiting(client, name, version)
        return _move(client, name, "challenger", found, None, False, actor, "rejected", "rejected",
                     f"rejected by {actor}: {reason}", found.tags.get("data_version", ""))


# --- the command line -------------------------------------------------------------------------

def _moved(event: dict) -> str:
    return "moved" if event["moved"] else "kept" if event["old"] == event["new"] else "no move"


def format_history(events: list[dict], reason_width: int = 160) -> str:
    """A table, oldest first; reasons cut to reason_width (`--json` has them whole)."""
    if not events:
        return "no champion moves recorded yet"
    head = ("seq", "time (UTC)", "actor", "alias", "old -> new", "move", "decision", "data", "reason")
    rows = [head] + [(str(e["seq"]), e["time"][:19].replace("T", " "), e["actor"], e["alias"] or "-",
                      f"{_label(e['old'])} -> {_label(e['new'])}", _moved(e), e["decision"],
                      (e["data_version"] or "-")[:8], e["reason"][:reason_width]) for e in events]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def format_status(client, name: str) -> str:
    model = _model(client, name)
    lines = [f"{name}" + ("" if model else " (not registered yet)")]
    for alias in ("champion", "challenger"):
        version = _v(model.aliases.get(alias)) if model else None
        tags = client.get_model_version(name, version).tags if version else {}
        lines.append(f"  @{alias:<10} {_label(version):<6} decision={tags.get('decision', '-')}  "
                     f"reason: {tags.get('reason', '-')}" if version else f"  @{alias:<10} unset")
    if model:
        waiting = client.search_model_versions(f"name = '{name}' and tags.decision = 'awaiting_approval'")
        lines += [f"  awaiting approval: v{v.version} (compared against "
                  f"{_label(_v(v.tags.get('compared_against')))})" for v in waiting]
    lock = _model(client, f"{name}.lock")
    lines.append(f"  lock: held by {lock.tags.get('holder', '?')} since {lock.tags.get('since', '?')}"
                 if lock else "  lock: free")
    return "\n".join(lines)


def _version_arg(text: str) -> str:
    text = text.lower().removeprefix("v")
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number")
    return text


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", help="registered model (default: register.model_name in params)")
    common.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser = argparse.ArgumentParser(prog="python -m pipeline.champion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("history", parents=[common], help="every decision, oldest first").add_argument(
        "--json", action="store_true")
    sub.add_parser("status", parents=[common], help="@champion, @challenger, pending approvals, the lock")
    back = sub.add_parser("rollback", parents=[common], help="@champion back to an earlier version")
    back.add_argument("--to", type=_version_arg, required=True)
    back.add_argument("--reason", required=True)
    yes = sub.add_parser("approve", parents=[common], help="promote a version awaiting approval")
    yes.add_argument("version", type=_version_arg)
    yes.add_argument("--note", default="")
    no = sub.add_parser("reject", parents=[common], help="a version awaiting approval becomes @challenger")
    no.add_argument("version", type=_version_arg)
    no.add_argument("--reason", required=True)
    return parser


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_registered_models(max_results=1)
        return client
    except Exception as err:
        raise ConnectionError(f"cannot reach the MLflow registry at {uri}: {err}") from None


def run(args) -> str:
    from pipeline import tracking
    from pipeline.params import load_section

    params = load_section("register", args.params)
    name, wait = args.name or params.model_name, params.lock_timeout_seconds
    client = _client(tracking.tracking_uri())
    if args.command == "history":
        events = history(client, name)
        return json.dumps(events, indent=2, ensure_ascii=False) if args.json else format_history(events)
    if args.command == "status":
        return format_status(client, name)
    if args.command == "rollback":
        event = rollback(client, name, args.to, args.reason, actor(), wait)
    elif args.command == "approve":
        event = approve(client, name, args.version, actor(), args.note, wait)
    else:
        event = reject(client, name, args.version, actor(), args.reason, wait)
    return (f"{name}: @{event['alias']} {_label(event['old'])} -> {_label(event['new'])} ({_moved(event)}), "
            f"recorded as #{event['seq']}: {event['reason']}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        print(run(args))
    except Exception as err:  # the operator gets one line, never a traceback
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise SystemExit(f"champion {args.command}: {lines[0]}") from None


if __name__ == "__main__":
    main()
