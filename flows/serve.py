"""Register the retrain deployments with a Prefect server and run them when they are due.

    make stack                                 # or: prefect server start; export PREFECT_API_URL=...
    python -m flows.serve [--workspace DIR]    # finds the stack's server in .stack/env

Two deployments of the same flow: `nightly` (cron `flow.cron`, read in `flow.timezone`, so 02:00
stays 02:00 on the hospital's clock across daylight-saving changes) and `on-new-data` (every
`flow.check_interval_seconds`; the flow waits until data/raw has been quiet for
`flow.quiet_seconds` and ends at once when nothing changed, so a copy of 500 images starts
one training run, not 500). Each deployment runs at most one flow run at a time, and the
flow's workspace lock keeps the two from overlapping.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve
from prefect.schedules import Cron

from flows.prefect_api import server_settings
from flows.retrain import retrain
from pipeline import project
from pipeline.params import load_params


def deployments(workspace: Path) -> list:
    params = load_params(workspace / "params.yaml").flow
    common = {"parameters": {"workspace": str(workspace)}, "concurrency_limit": 1}
    return [retrain.to_deployment(name="nightly", schedule=Cron(params.cron, timezone=params.timezone), **common),
            retrain.to_deployment(name="on-new-data", interval=params.check_interval_seconds, **common)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, help="default: the project this command is run in (the folder holding dvc.yaml)")
    args = parser.parse_args(argv)
    args.workspace = args.workspace or project.root()
    with server_settings(args.workspace):
        serve(*deployments(args.workspace.resolve()))


if __name__ == "__main__":
    main()
