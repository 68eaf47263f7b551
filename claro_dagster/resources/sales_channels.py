"""Sales channels: destinations that records are pushed to one channel object at a time (Shopify products, Amazon
listings), with what each holds of each record kept in the channel state (`catalogue.channels`).

Each channel's module offers `client_from_env(dest)` (its client, from the environment variables the spec names,
read when a push runs, never at load) and `push_from_store(store, destination, dest, client, *, filter,
dry_run) -> PushPlan`. The destination asset and `claro push` both push through `push_destination`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from claro_dagster.catalogue.channels import PushPlan
from claro_dagster.resources.push_alerts import alerting

#: kind -> the module that pushes it
CHANNEL_MODULES = {"shopify": "claro_dagster.resources.shopify", "amazon": "claro_dagster.resources.amazon",
                   "rest": "claro_dagster.resources.rest_destination"}
CHANNEL_KINDS: tuple[str, ...] = tuple(CHANNEL_MODULES)


def required_env(dest: Any) -> list[str]:
    """The environment variables a channel destination cannot push without (endpoint overrides are optional)."""
    if dest.kind == "shopify":
        return [dest.shop_url_env, dest.token_env]
    if dest.kind == "amazon":  # the SP-API and token endpoints default to Amazon's own
        return [dest.client_id_env, dest.client_secret_env, dest.refresh_token_env]
    if dest.kind == "rest":  # the base URL (when the url template is relative) and the auth's secrets
        from claro_dagster.resources.rest_destination import required_env as rest_required_env

        return rest_required_env(dest)
    return []


def missing_env(dest: Any) -> str | None:
    """The required variables that are not set (`A and B`), if any."""
    return " and ".join(name for name in required_env(dest) if name and not os.environ.get(name)) or None


def push_destination(store: Any, destination: str, dest: Any, *, filter: str | None = None,
                     dry_run: bool = False) -> PushPlan:
    """Push what changed in a channel destination's records (see each channel's `push_from_store`)."""
    module = importlib.import_module(CHANNEL_MODULES[dest.kind])
    client = None if dry_run else module.client_from_env(dest)
    with alerting(store, destination, dest, dry_run=dry_run):  # push.failed: outbox events and Slack
        return module.push_from_store(store, destination, dest, client, filter=filter, dry_run=dry_run)
