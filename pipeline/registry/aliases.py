"""Moving `@champion` safely: every change of an alias is compare-and-set under the registry lock,
recorded in the history, and tagged on the decided version (`decision`, `reason`)."""
from __future__ import annotations

from pipeline.registry.client import TAG_VALUE_LIMIT, alias_version, existing_version, label, version_or_none
from pipeline.registry.history import record
from pipeline.registry.lock import registry_lock

DECISIONS = ("pending", "champion", "challenger", "awaiting_approval", "rejected")


class ChampionMoved(RuntimeError):
    """Compare-and-set failed: the alias is not what the decision was made against."""


def _tag_version(client, name: str, version: str, decision: str, reason: str) -> None:
    client.set_model_version_tag(name, version, "decision", decision)
    client.set_model_version_tag(name, version, "reason", reason[:TAG_VALUE_LIMIT])


def _move(client, name, alias, found, expected, check, actor, decision, tag_decision, reason, data_version):
    """The locked part of every alias change: compare, set, record, tag."""
    version, old = str(found.version), alias_version(client, name, alias)
    if check and old != version_or_none(expected):
        raise ChampionMoved(f"@{alias} is {label(old)}, not {label(version_or_none(expected))} that this decision "
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
        found = existing_version(client, name, version, ready=alias == "champion")
        return _move(client, name, alias, found, expected, alias == "champion", actor, decision, decision,
                     reason, data_version)


def record_decision(client, name, version, actor, decision, reason, data_version="", wait_seconds=60) -> dict:
    """A decision that moves no alias (e.g. awaiting_approval), recorded against the current champion."""
    _check_decision(decision)
    with registry_lock(client, name, actor, wait_seconds):
        version = str(existing_version(client, name, version).version)
        event = record(client, name, {"actor": actor, "alias": "champion", "old": alias_version(client, name),
                                      "new": version, "moved": False, "decision": decision, "reason": reason,
                                      "data_version": data_version})
        _tag_version(client, name, version, decision, reason)
        return event


def rollback(client, name, to, reason, actor, wait_seconds=60) -> dict:
    with registry_lock(client, name, actor, wait_seconds):
        found = existing_version(client, name, to, ready=True)
        return _move(client, name, "champion", found, None, False, actor, "rollback", "champion",
                     f"rolled back by {actor}: {reason}", found.tags.get("data_version", ""))


def _awaiting(client, name, version):
    found = existing_version(client, name, version, ready=True)
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
