"""The shape every stage shares: `run(params, inputs, outputs)` and a thin `main()` around it.

A stage module declares two frozen dataclasses of paths, `Inputs` and `Outputs` (field names are
the flags dvc.yaml passes: `version_file` is `--version-file`), and

    def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict    # no argument parsing, no exit
    def main(argv=None):
        quiet()
        args = parser(__doc__, Inputs, Outputs).parse_args(argv)
        with one_line_errors("dedup"):
            summary = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
        print(...)

`run` raises `StageError` for what a person can fix (bad input, a missing file); `main` turns it,
and a `ParamsError`, into one line naming the stage, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
from contextlib import contextmanager
from pathlib import Path

from pipeline.params import ParamsError


class StageError(RuntimeError):
    """A failure a person can act on; its message is the whole story."""


def parser(description: str | None, *groups: type) -> argparse.ArgumentParser:
    """`--params` plus one `--<field>` path flag per field of each dataclass in `groups`."""
    out = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    out.add_argument("--params", type=Path, default=Path("params.yaml"))
    for group in groups:
        for field in dataclasses.fields(group):
            required = field.default is dataclasses.MISSING
            out.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=Path, required=required,
                             default=None if required else field.default)
    return out


def paths(group: type, args: argparse.Namespace):
    """The dataclass `group` filled from parsed flags."""
    return group(**{field.name: getattr(args, field.name) for field in dataclasses.fields(group)})


@contextmanager
def one_line_errors(stage: str):
    """StageError and ParamsError end the process with `<stage>: <message>` (exit status 1)."""
    try:
        yield
    except (StageError, ParamsError) as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise SystemExit(f"{stage}: " + "\n".join(lines)) from None
