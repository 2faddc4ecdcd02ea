"""A mutex in the registry, across processes and machines: the registered model `<name>.lock`,
whose creation is atomic (registered-model names are unique)."""
from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from contextlib import contextmanager

from pipeline.registry.client import error_code, now, registered_model

log = logging.getLogger(__name__)


class RegistryBusy(RuntimeError):
    """Another process holds the registry lock longer than we may wait."""


def _create(client, model_name: str, tags: dict, description: str) -> bool:
    """Create a registered model; False when the name is taken (the atomic step of the lock)."""
    try:
        client.create_registered_model(model_name, tags=tags, description=description)
        return True
    except Exception as err:
        if error_code(err) == "RESOURCE_ALREADY_EXISTS":
            return False
        raise


def _break_if_stale(client, lock_name: str, lock, stale_seconds: float) -> bool:
    """Delete a lock older than stale_seconds (its holder was killed). Only the waiter that creates
    the break marker of this very lock deletes it, so two waiters never both break it, and a late
    one never deletes the fresh lock the other has just taken."""
    if time.time() - lock.creation_timestamp / 1000 < stale_seconds:
        return False
    token = lock.tags.get("token", str(lock.creation_timestamp))
    marker = f"{lock_name}.break.{token}"
    if not _create(client, marker, {"breaking": token}, f"breaking the stale lock {lock_name}"):
        return False
    try:
        current = registered_model(client, lock_name)
        if current is not None and current.tags.get("token", str(current.creation_timestamp)) == token:
            log.warning("breaking the stale lock %s held by %s since %s", lock_name,
                        lock.tags.get("holder", "?"), lock.tags.get("since", "?"))
            client.delete_registered_model(lock_name)
    finally:
        client.delete_registered_model(marker)
    return True


def _release(client, lock_name: str, token: str) -> None:
    try:
        lock = registered_model(client, lock_name)
        if lock is not None and lock.tags.get("token") == token:
            client.delete_registered_model(lock_name)
        else:
            log.warning("%s was broken as stale while we held it", lock_name)
    except Exception as err:  # cleanup must not hide the real outcome; the lock goes stale instead
        log.warning("could not release %s (%s); it counts as stale later", lock_name, err)


@contextmanager
def registry_lock(client, name: str, holder: str, wait_seconds: float, stale_seconds: float = 900):
    """Hold `<name>.lock` for the block; RegistryBusy after wait_seconds."""
    lock_name, token = f"{name}.lock", uuid.uuid4().hex
    tags = {"holder": holder, "token": token, "since": now(), "host": socket.gethostname(), "pid": str(os.getpid())}
    description = f"{holder} is changing @champion of {name}; delete this model only if that process is gone"
    deadline = time.monotonic() + wait_seconds
    while not _create(client, lock_name, tags, description):
        lock = registered_model(client, lock_name)
        if lock is None or _break_if_stale(client, lock_name, lock, stale_seconds):
            continue  # released or broken meanwhile: try again at once
        if time.monotonic() >= deadline:
            raise RegistryBusy(f"{name} is locked by {lock.tags.get('holder', '?')} since "
                               f"{lock.tags.get('since', '?')}; gave up after {wait_seconds:g} s (if that "
                               f"process is gone, delete the registered model {lock_name!r})")
        time.sleep(min(random.uniform(0.1, 0.4), max(deadline - time.monotonic(), 0.05)))
    try:
        yield {"lock": lock_name, **tags}
    finally:
        _release(client, lock_name, token)
