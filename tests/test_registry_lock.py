"""pipeline.registry.lock: a lock held by another process, its holder killed, the stale lock broken."""
import time

import pytest

from pipeline.registry import aliases
from pipeline.registry.client import alias_version
from pipeline.registry.history import history
from pipeline.registry.lock import RegistryBusy, registry_lock
from tests.registry_store import start, wait_for
from tests.registry_store import NAME, empty_store, store  # noqa: F401 (fixtures)


HOLD = """
import time
from pathlib import Path
from mlflow.tracking import MlflowClient
from pipeline.registry import aliases
from pipeline.registry.lock import registry_lock
with registry_lock(MlflowClient(), "{name}", "pipeline run holder", wait_seconds=5):
    Path("{ready}").touch()
    time.sleep(60)
"""


def test_lock_held_elsewhere_then_its_holder_killed(store, tmp_path):
    client, uri = store
    holder = start(uri, HOLD.format(name=NAME, ready=tmp_path / "held"))
    try:
        wait_for(tmp_path / "held", holder)
        began = time.monotonic()
        with pytest.raises(RegistryBusy, match="locked by pipeline run holder since .* gave up after 1 s"):
            aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run b", "champion", "x",
                                wait_seconds=1)
        assert 1 <= time.monotonic() - began < 10
        assert alias_version(client, NAME) is None and history(client, NAME) == []
    finally:
        holder.kill()  # a killed holder never releases: its lock stays until it is stale
        holder.wait()
    assert client.get_registered_model(f"{NAME}.lock").tags["holder"] == "pipeline run holder"
    with pytest.raises(RegistryBusy):  # not stale yet
        with registry_lock(client, NAME, "pipeline run c", wait_seconds=0):
            pass
    time.sleep(0.3)
    with registry_lock(client, NAME, "pipeline run c", wait_seconds=0, stale_seconds=0.2) as lock:
        assert client.get_registered_model(f"{NAME}.lock").tags["token"] == lock["token"]
    names = [m.name for m in client.search_registered_models()]
    assert names == [NAME]  # the lock and the break marker are gone
