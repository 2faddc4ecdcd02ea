"""The history of `@champion` decisions, kept in the registry: one registered-model tag
`champion_history.<seq>` (JSON) per decision, appended under the registry lock."""
from __future__ import annotations

import json

from pipeline.registry.client import TAG_VALUE_LIMIT, label, now, registered_model, version_or_none

HISTORY_PREFIX = "champion_history."
FIELDS = ("seq", "time", "actor", "alias", "old", "new", "moved", "decision", "reason", "data_version")


def history(client, name: str) -> list[dict]:
    model = registered_model(client, name)
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
    model = registered_model(client, name)
    if model is None:
        raise ValueError(f"no registered model {name!r} to record a decision for")
    tags = model.tags
    seq = max((int(k[len(HISTORY_PREFIX):]) for k in tags if k.startswith(HISTORY_PREFIX)), default=0) + 1
    full = {"actor": "", "alias": None, "old": None, "new": None, "moved": False, "decision": "",
            "reason": "", "data_version": "", **event, "seq": seq, "time": now()}
    full = {k: full[k] for k in FIELDS}
    full["old"], full["new"] = version_or_none(full["old"]), version_or_none(full["new"])
    full["moved"] = bool(full["moved"])
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{seq:06d}", _fit(full))
    return full


def moved(event: dict) -> str:
    return "moved" if event["moved"] else "kept" if event["old"] == event["new"] else "no move"


def format_history(events: list[dict], reason_width: int = 160) -> str:
    """A table, oldest first; reasons cut to reason_width (`--json` has them whole)."""
    if not events:
        return "no champion moves recorded yet"
    head = ("seq", "time (UTC)", "actor", "alias", "old -> new", "move", "decision", "data", "reason")
    rows = [head] + [(str(e["seq"]), e["time"][:19].replace("T", " "), e["actor"], e["alias"] or "-",
                      f"{label(e['old'])} -> {label(e['new'])}", moved(e), e["decision"],
                      (e["data_version"] or "-")[:8], e["reason"][:reason_width]) for e in events]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)
