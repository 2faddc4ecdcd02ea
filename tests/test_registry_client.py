"""pipeline.registry.client: the one client of the registry, and what it says when there is none."""
import pytest

from pipeline.registry.client import RegistryUnavailable, alias_version, existing_version, registry_client
from tests.conftest import free_port
from tests.registry_store import NAME, empty_store, store  # noqa: F401 (fixtures)


def test_the_client_talks_to_the_pipelines_store(store):
    client, uri = store
    ours = registry_client()
    assert ours.tracking_uri == uri and ours._registry_uri == uri
    assert [m.name for m in ours.search_registered_models()] == [NAME] and alias_version(ours, NAME) is None
    with pytest.raises(ValueError, match="v9 does not exist"):
        existing_version(ours, NAME, 9)


def test_an_unreachable_registry_is_named_and_nothing_is_changed(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryUnavailable, match=f"cannot reach the MLflow registry at {uri}"):
        registry_client()
