"""The one registry client, and the lookups every registry module shares."""
from __future__ import annotations

import os
import socket
from datetime import datetime, timezone

# MLflow checks registry tag values against 100 000 characters client side, but its SQL schema
# stores registered-model tag values as VARCHAR(5000): PostgreSQL refuses anything longer.
TAG_VALUE_LIMIT = 5000


class RegistryUnavailable(RuntimeError):
    """The registry could not be reached; nothing was changed."""


def registry_client():
    """An MlflowClient on the pipeline's store (pipeline.tracking.tracking_uri), checked with one
    cheap call; raises RegistryUnavailable naming the URI when it cannot be reached."""
    from mlflow.tracking import MlflowClient

    from pipeline import tracking

    uri = tracking.tracking_uri()  # only sets the URI: nothing is contacted before the try
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_registered_models(max_results=1)
        return client
    except Exception as err:  # any transport or store error: nothing has been changed yet
        raise RegistryUnavailable(f"cannot reach the MLflow registry at {uri}: {err}") from None


def actor() -> str:
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{socket.gethostname() or 'host'}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def version_or_none(version) -> str | None:
    return None if version in (None, "") else str(version)


def label(version) -> str:
    return "unset" if version is None else f"v{version}"


def error_code(err: Exception) -> str:
    return str(getattr(err, "error_code", ""))


def registered_model(client, name: str):
    """The registered model, or None when there is none by that name."""
    try:
        return client.get_registered_model(name)
    except Exception as err:
        if error_code(err) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def existing_version(client, name: str, version, ready: bool = False):
    """A version that exists (and, with `ready`, can serve); ValueError naming it otherwise."""
    try:
        found = client.get_model_version(name, str(version))
    except Exception as err:
        if error_code(err) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ValueError(f"{name} v{version} does not exist (or was deleted)") from None
        raise
    if ready and found.status != "READY":
        raise ValueError(f"{name} v{version} is {found.status}, not READY: it cannot serve")
    return found


def alias_version(client, name: str, alias: str = "champion") -> str | None:
    model = registered_model(client, name)
    return version_or_none(model.aliases.get(alias)) if model else None
