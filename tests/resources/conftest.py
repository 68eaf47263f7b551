"""Fixtures for connector tests: real local servers from `tests/servers.py`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_servers():
    name = "claro_test_servers"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "servers.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


servers = _load_servers()
moto_endpoint = servers.moto_endpoint
s3 = servers.s3
bucket = servers.bucket
pg_url = servers.pg_url
