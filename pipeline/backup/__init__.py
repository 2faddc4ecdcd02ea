"""backup: what the project cannot recompute, into a dated folder with a manifest and checksums,
and back into a fresh clone.

    python -m pipeline.backup create [--to DIR]               # make backup: DIR/backup-<UTC time>/
    python -m pipeline.backup verify FOLDER                   # every checksum, nothing restored
    python -m pipeline.backup restore FOLDER [--force]        # make restore FROM=FOLDER, in a fresh clone

A backup folder holds
  git.bundle      every branch and tag: code, params, dvc.lock, each data/raw.dvc ever committed
                  (`git clone git.bundle` is a fresh clone when there is no git server)
  dvc/            the DVC objects every committed version of data/raw needs, in DVC's cache layout
                  (from the cache; fetched from the DVC remote first when some are missing)
  files/          the split ledger and the clinicians' label corrections (paths from dvc.yaml)
  mlflow/         the local tracking and registry store: mlflow.db (a consistent online copy) and mlruns/
  stack/          on the stack instead: pg_dump of the MLflow and Prefect databases, the MLflow
                  artifact bucket, the stack's secrets
  manifest.json   what is where, from which project, commit and tool versions
  SHA256SUMS      every file's checksum (`sha256sum -c SHA256SUMS` checks it by hand)
Recomputed, so left out: data/interim, data/pixels, data/augmented, models/, reports/, the Keras cache
and the DVC objects of stage outputs (`dvc repro` makes them again). Restore checks every checksum
first and refuses a backup that does not match, restoring nothing.

Rooms: archive.py (the folder: create, verify, restore), local.py (DVC objects, the ledger and labels,
the SQLite store), services.py (the stack's PostgreSQL and S3); __main__.py is the command line.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path


class BackupError(RuntimeError):
    """A backup that cannot be made or restored; the message says what to do."""


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise BackupError(f"{' '.join(map(str, cmd))} failed: {(done.stderr or done.stdout).strip()[-1500:]}")
    return done.stdout


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
