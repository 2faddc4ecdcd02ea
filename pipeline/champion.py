"""champion: the command line of the registry's `@champion` (pipeline/registry/).

    python -m pipeline.champion history [--json]             # every decision, oldest first
    python -m pipeline.champion status                       # @champion, @challenger, approvals, the lock
    python -m pipeline.champion rollback --to V --reason T   # @champion back to an earlier version
    python -m pipeline.champion approve V [--note T]         # a version awaiting approval becomes @champion
    python -m pipeline.champion reject V --reason T          # ... or @challenger

Every change goes through pipeline.registry.aliases (lock, compare-and-set, history), the same
code the register stage and the retrain flow's approval use.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline import project
from pipeline.registry import aliases
from pipeline.registry.client import actor, label, registered_model, registry_client, version_or_none
from pipeline.registry.history import format_history, history, moved


def format_status(client, name: str) -> str:
    model = registered_model(client, name)
    lines = [f"{name}" + ("" if model else " (not registered yet)")]
    for alias in ("champion", "challenger"):
        version = version_or_none(model.aliases.get(alias)) if model else None
        tags = client.get_model_version(name, version).tags if version else {}
        lines.append(f"  @{alias:<10} {label(version):<6} decision={tags.get('decision', '-')}  "
                     f"reason: {tags.get('reason', '-')}" if version else f"  @{alias:<10} unset")
    if model:
        waiting = client.search_model_versions(f"name = '{name}' and tags.decision = 'awaiting_approval'")
        lines += [f"  awaiting approval: v{v.version} (compared against "
                  f"{label(version_or_none(v.tags.get('compared_against')))})" for v in waiting]
    lock = registered_model(client, f"{name}.lock")
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
    common.add_argument("--params", type=Path, help="default: params.yaml in the project root")
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


def run(args) -> str:
    from pipeline.params import load_params

    params = load_params(args.params or project.root() / "params.yaml").register
    name, wait = args.name or params.model_name, params.lock_timeout_seconds
    client = registry_client()
    if args.command == "history":
        events = history(client, name)
        return json.dumps(events, indent=2, ensure_ascii=False) if args.json else format_history(events)
    if args.command == "status":
        return format_status(client, name)
    if args.command == "rollback":
        event = aliases.rollback(client, name, args.to, args.reason, actor(), wait)
    elif args.command == "approve":
        event = aliases.approve(client, name, args.version, actor(), args.note, wait)
    else:
        event = aliases.reject(client, name, args.version, actor(), args.reason, wait)
    return (f"{name}: @{event['alias']} {label(event['old'])} -> {label(event['new'])} ({moved(event)}), "
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
