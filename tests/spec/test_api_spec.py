"""The spec's `api:` section: confidence caps of proposals made through the REST API."""

from __future__ import annotations

import pytest

from claro_dagster.catalogue.proposals import max_confidence
from claro_dagster.spec import load_spec
from claro_dagster.spec.loader import SpecError

BASE = "catalogues:\n  products:\n    key: sku\n    attributes:\n      sku: {type: text}\n"


def test_caps_default_per_client_and_out_of_range(tmp_path):
    path = tmp_path / "claro.yaml"
    path.write_text(BASE, encoding="utf-8")
    assert max_confidence(load_spec(path), "erp") == 80  # below the default auto_apply (90): proposals wait
    path.write_text(BASE + "api:\n  max_confidence: 60\n  clients:\n    erp: {max_confidence: 95}\n", encoding="utf-8")
    spec = load_spec(path)
    assert (max_confidence(spec, "erp"), max_confidence(spec, "pim")) == (95, 60)
    path.write_text(BASE + "api:\n  max_confidence: 175\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"claro.yaml:7 api.max_confidence: should be less than or equal to 100"):
        load_spec(path)
