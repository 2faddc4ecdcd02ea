"""Approvals, the champion's history and rollback, read from and written to the MLflow registry through
`pipeline.registry` (lock, compare-and-set, history): the code `python -m pipeline.champion` runs.
The app talks to MLflow with the pipeline's own credentials (environment, else $STACK_DIR/env); the
signed-in clinician is the recorded actor of every decision."""
from __future__ import annotations

import html

import markdown

from pipeline.registry import aliases
from pipeline.registry.client import alias_version, registered_model
from pipeline.registry.history import history


def card_html(text: str) -> str:
    """The model card (markdown the register stage wrote) as HTML, any HTML inside it shown as text."""
    return markdown.markdown(html.escape(text, quote=False), extensions=["tables"])


def waiting(client, name: str) -> list[dict]:
    """Versions awaiting a clinician's approval, newest first, with what the decision rests on."""
    if registered_model(client, name) is None:
        return []
    found = client.search_model_versions(f"name = '{name}' and tags.decision = 'awaiting_approval'")
    return [{"version": str(v.version), "reason": v.tags.get("reason", ""),
             "compared_against": v.tags.get("compared_against") or "none",
             "data_version": v.tags.get("data_version", ""),
             "operating_point": {k[3:]: t for k, t in sorted(v.tags.items()) if k.startswith("op_")},
             "card": card_html(v.description or "")}
            for v in sorted(found, key=lambda v: -int(v.version))]


def status(client, name: str) -> dict:
    return {"champion": alias_version(client, name, "champion"),
            "challenger": alias_version(client, name, "challenger"),
            "history": list(reversed(history(client, name)))}


def decide(client, name: str, version: str, approve: bool, who: str, note: str, wait: float) -> dict:
    if approve:
        return aliases.approve(client, name, version, who, note, wait)
    if not note.strip():
        raise ValueError("say why the version is rejected")
    return aliases.reject(client, name, version, who, note, wait)


def rollback(client, name: str, to: str, reason: str, who: str, wait: float) -> dict:
    if not reason.strip():
        raise ValueError("a rollback needs a reason")
    return aliases.rollback(client, name, to, reason, who, wait)
