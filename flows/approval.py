"""Clinician sign-off before `@champion` moves (`register.require_approval`).

When register decides a new version earns promotion but params ask for approval, the version is
recorded as `awaiting_approval` and nothing moves. On a Prefect server the retrain flow then
pauses and waits for a form in the Prefect UI (flow run -> Resume), showing the model card and the
paired comparison: approve -> `@champion` moves (compare-and-set against the champion it was
compared with); reject, or no answer within `register.approval_timeout_seconds` -> `@challenger`
with that reason. Without a server, `python -m pipeline.champion approve VERSION` (or `reject`)
does the same. Both paths run `pipeline.registry.aliases`, the one implementation.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger
from prefect.input import RunInput

from flows.prefect_api import server_available
from pipeline.params import load_params
from pipeline.registry import aliases
from pipeline.registry.client import registry_client


class Approval(RunInput):
    approve: bool = False
    reviewer: str = ""
    note: str = ""


def awaiting(registry: dict) -> bool:
    """Whether the registry still holds the version as awaiting approval (the registry is the truth,
    not reports/registry.json, which a later run without a new model leaves as it was)."""
    version = registry_client().get_model_version(registry["model_name"], str(registry["version"]))
    return version.tags.get("decision") == "awaiting_approval"


def form_text(root: Path, registry: dict) -> str:
    comparison = registry.get("comparison") or {}
    card = (root / "reports" / "model_card.md").read_text() if (root / "reports" / "model_card.md").exists() else ""
    return (f"## Promote {registry['model_name']} v{registry['version']} to @champion?\n\n{registry['reason']}\n\n"
            f"Paired comparison on the same test images: `{json.dumps(comparison, default=str)[:1500]}`\n\n"
            "Tick **approve** and give your name to promote; leave it unticked to reject (say why in the note).\n\n"
            f"---\n{card}")


def apply_answer(root: Path, registry: dict, answer: Approval | None) -> str:
    """Apply the clinician's answer (None: no answer in time) through pipeline.registry.aliases."""
    params = load_params(root / "params.yaml").register
    client, name, version = registry_client(), registry["model_name"], str(registry["version"])
    who = answer.reviewer.strip() if answer else ""
    if answer is not None and answer.approve and who:
        event = aliases.approve(client, name, version, who, answer.note, params.lock_timeout_seconds)
        return f"v{version}: approved by {who}; @champion moved: {event['reason']}"
    if answer is not None and answer.approve:  # a slip of the form must not reject the model for good
        return (f"v{version}: approval needs the reviewer's name; still awaiting approval "
                f"(python -m pipeline.champion approve {version})")
    if answer is None:
        who, reason = "approval timeout", f"no answer within {params.approval_timeout_seconds} s"
    else:
        reason = answer.note or "rejected without a note"
    event = aliases.reject(client, name, version, who or "unknown", reason, params.lock_timeout_seconds)
    return f"v{version}: not promoted ({event['reason']})"


def request_approval(root: Path, registry: dict) -> str:
    """Pause the running flow for a clinician's answer, then apply it; without a server, say how to answer."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    logger = get_run_logger()
    if not awaiting(registry):  # answered already (UI or command line): never ask twice
        message = f"v{registry['version']} was already decided; no approval asked"
        logger.info(message)
        return message
    if not server_available():
        message = (f"v{registry['version']} awaits a clinician's approval: "
                   f"python -m pipeline.champion approve {registry['version']} (or reject {registry['version']} --reason ...)")
        logger.info(message)
        return message
    params = load_params(root / "params.yaml").register
    form = Approval.with_initial_data(description=form_text(root, registry))
    logger.info("waiting up to %ss for a clinician to approve v%s in the Prefect UI",
                params.approval_timeout_seconds, registry["version"])
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=params.approval_timeout_seconds, poll_interval=2)
    except FlowPauseTimeout:
        answer = None
    if not awaiting(registry):  # answered meanwhile elsewhere (the clinic's page, the command line)
        message = f"v{registry['version']} was decided outside this flow run; nothing more to do"
        logger.info(message)
        return message
    message = apply_answer(root, registry, answer)
    logger.info(message)
    return message


def resume_waiting_run(root: Path, version: str, approve: bool, reviewer: str, note: str) -> str | None:
    """Resume the flow run paused for `version`'s approval (its form names the version) with this answer, after
    the answer was applied elsewhere (the clinic's page): the run then finds it decided and goes on. None when
    no server is configured or no run waits for this version; the id of the resumed run otherwise."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run
    from prefect.input.run_input import keyset_from_paused_state

    from flows.prefect_api import server_settings

    with server_settings(root):
        if not server_available():
            return None
        with get_client(sync_client=True) as api:
            paused = api.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            for run in paused:
                try:
                    text = api.read_flow_run_input(run.id, keyset_from_paused_state(run.state)["description"])
                except Exception:  # a pause without a form (not ours)
                    continue
                if f"v{version} to @champion?" in text:
                    resume_flow_run(run.id, run_input={"approve": approve, "reviewer": reviewer, "note": note})
                    return str(run.id)
    return None
