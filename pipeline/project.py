"""Where the project's own files are, wherever a command is run from: the root (the nearest folder
up from the working directory that holds dvc.yaml), the Keras cache, and the paths dvc.yaml passes
each stage. These are the defaults the README names; before they lived only in the Makefile, so
`dvc repro` or `python -m pipeline.champion` run by hand looked in `~/.keras` or the current folder.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml

MARKER = "dvc.yaml"


def root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding dvc.yaml;
    the working directory itself when there is none (a command run outside any project)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / MARKER).is_file():
            return folder
    return Path.cwd().resolve()


def keras_home(project: Path | None = None) -> Path:
    """$KERAS_HOME, else .keras/ in the project root (where `make demo` seeds the ImageNet weights)."""
    return Path(os.environ.get("KERAS_HOME") or (project or root()) / ".keras")


def use_keras_home() -> Path:
    """Set KERAS_HOME for this process when it is unset: Keras reads it once, when TensorFlow or
    Keras is first imported, and downloads weights there. Call before that import."""
    home = keras_home()
    os.environ.setdefault("KERAS_HOME", str(home))
    return home


def stage_flags(stage: str, project: Path | None = None) -> dict[str, str]:
    """`--flag value` pairs of the stage's command in dvc.yaml, flag names with '_' for '-':
    {'raw': 'data/raw', 'out': 'models/${key}', ...}; empty when there is no such stage.
    A foreach stage keeps its `${key}` (and `${item...}`) placeholders."""
    path = (project or root()) / MARKER
    if not path.is_file():
        return {}
    spec = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}).get(stage)
    if not spec:
        return {}
    words = shlex.split(spec.get("do", spec).get("cmd", ""))
    return {word[2:].replace("-", "_"): value for word, value in zip(words, words[1:] + [""])
            if word.startswith("--") and value and not value.startswith("--")}


def relative(path: str | Path, project: Path | None = None) -> Path:
    """A project path as seen from the working directory ('data/raw' in the root, '../data/raw' one below)."""
    return Path(os.path.relpath((project or root()) / path))
