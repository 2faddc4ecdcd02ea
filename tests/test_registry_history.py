"""pipeline.registry.history: events as registered-model tags within PostgreSQL's tag limit."""
import json

from pipeline.registry import aliases
from pipeline.registry.client import TAG_VALUE_LIMIT
from tests.registry_store import NAME, empty_store, store  # noqa: F401 (fixtures)


def test_long_reason_is_cut_to_the_tag_limit(store):
    client, _ = store
    event = aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "é\n" * 6000)
    stored = client.get_registered_model(NAME).tags["champion_history.000001"]
    assert len(stored) <= TAG_VALUE_LIMIT and json.loads(stored) == event
    assert event["reason"].endswith("…")
