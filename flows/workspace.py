"""The retrain flow's bookkeeping in its workspace: the stage order, the lock that keeps two runs
apart, when files last arrived, and the markers of what an earlier run pushed and validated."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.tracking import digest

COMMITTED = ("dvc.lock", ".gitignore", "data", "reports", "models")  # what a run commits to git
PUSHED = Path(".dvc") / "tmp" / "retrain-pushed"  # written after a push succeeds; a cheap check every few minutes


def stage_order(root: Path) -> list[str]:
    """The pipeline's stages in dependency order, read from DVC's graph (dvc.yaml), .dvc files left out."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        return [s.addressing for s in reversed(list(nx.topological_sort(graph))) if not s.addressing.endswith(".dvc")]


def newest_change(raw: Path) -> float:
    """When the latest file under data/raw arrived or changed. ctime is set by the kernel when a file
    is created, copied in or renamed (a copy that keeps an old mtime still counts), and unlike mtime it
    cannot be set to the future by a camera or a sync tool; a clock that jumped is clamped to now."""
    stamps = [p.stat().st_ctime for p in raw.rglob("*") if p.is_file()]
    return min(max(stamps, default=0.0), time.time())


@contextmanager
def workspace_lock(root: Path, timeout: int):
    from filelock import FileLock, Timeout

    lock = FileLock(root / ".dvc" / "tmp" / "retrain.lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise RuntimeError(f"another retrain run holds the lock on {root}; not starting a second one") from None
    try:
        yield
    finally:
        lock.release()


def validated_version(root: Path) -> str | None:
    """The data version the last validate ran on (None before the first run)."""
    report = root / "reports" / "validation.json"
    return json.loads(report.read_text()).get("data_version") if report.exists() else None


def pushed_state(root: Path) -> str:
    """What a successful push covered: the data version and every stage's outputs (dvc.lock)."""
    return digest(*[root / p for p in ("data/raw.dvc", "dvc.lock") if (root / p).exists()])


def mark_pushed(root: Path) -> None:
    (root / PUSHED).write_text(pushed_state(root))


def push_pending(root: Path) -> bool:
    marker = root / PUSHED
    return not marker.exists() or marker.read_text() != pushed_state(root)
