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

A flag left out takes the path dvc.yaml passes for that stage (`python -m pipeline.dedup` alone
runs on the project's files, from any folder of the project); `--params` defaults to the project's
params.yaml. Explicit flags always win.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from contextlib import contextmanager
from pathlib import Path

from pipeline import project
from pipeline.params import ParamsError


class StageError(RuntimeError):
    """A failure a person can act on; its message is the whole story."""


class StageParser(argparse.ArgumentParser):
    """Fills the flags of a foreach stage whose dvc.yaml path holds `${key}` (train's `models/${key}`)
    from the flag that dvc.yaml passes the key itself (`--arch ${key}`)."""

    templates: dict[str, str] = {}
    key_flag: str | None = None

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        key = getattr(parsed, self.key_flag, None) if self.key_flag else None
        for dest, template in self.templates.items():
            if getattr(parsed, dest) is None:
                if key is None:
                    self.error(f"--{dest.replace('_', '-')} is required")
                setattr(parsed, dest, project.relative(template.replace("${key}", str(key))))
        return parsed


def parser(description: str | None, *groups: type, stage: str | None = None) -> argparse.ArgumentParser:
    """`--params` plus one `--<field>` path flag per field of each dataclass in `groups`; a flag left out
    takes the value dvc.yaml passes to `stage` (default: the module of the first group, `pipeline.dedup`
    -> `dedup`), else the field's default, else it is required."""
    out = StageParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    stage = stage or (_module_of(groups[0]).rsplit(".", 1)[-1] if groups else "")
    flags = project.stage_flags(stage) if stage else {}
    out.templates = {}
    out.key_flag = next((name for name, value in flags.items() if value == "${key}"), None)
    out.add_argument("--params", type=Path, default=project.relative("params.yaml"),
                     help="default: params.yaml in the project root")
    for group in groups:
        for field in dataclasses.fields(group):
            flag, value = f"--{field.name.replace('_', '-')}", flags.get(field.name)
            if value is not None and "${" in value:
                out.templates[field.name] = value
                out.add_argument(flag, dest=field.name, type=Path, default=None, help=f"default: {value}")
            elif value is not None:
                out.add_argument(flag, dest=field.name, type=Path, default=project.relative(value),
                                 help=f"default (dvc.yaml): {value}")
            else:
                required = field.default is dataclasses.MISSING
                out.add_argument(flag, dest=field.name, type=Path, required=required,
                                 default=None if required else field.default)
    return out


def _module_of(group: type) -> str:
    """The module that declares `group`, also when it runs as `python -m pipeline.<stage>` (`__main__`)."""
    if group.__module__ != "__main__":
        return group.__module__
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec else ""


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
