"""A small project for tests that run the `claro` command: its spec, its supplier files, and a runner.

Small on purpose: every `claro` process pays Dagster's import time, so the project keeps `claro run`
to two short batches. The first file creates three products; the second contradicts their three
prices (queued for review: the source's `overwrite_confidence` is below `auto_apply`) and adds a
fourth product (applied).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEBHOOK_SECRET_ENV = "CLARO_TEST_WEBHOOK_SECRET"

SPEC = """\
name: cli-test
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text, identifier: true, required: true}
      title: {type: text}
      price: {type: number, min: 0}
      weight: {type: %(weight_type)s}
      status: {type: enum, values: [active, draft]}
thresholds:
  default: {auto_apply: 90, review: 60, reject: 40}
sources:
  shop_csv: {catalogue: products, kind: inbox, path: inbox/shop, overwrite_confidence: 80}
  portal: {catalogue: products, kind: upload}
pipelines:
  products_onboarding:
    catalogue: products
    sources: [shop_csv, portal]
    error_budget: 0.5
notifications:
  webhooks:
    erp:
      url: http://127.0.0.1:9/hooks
      events: [change.applied]
      secret_env: %(secret)s
"""

FIRST = "sku,title,price,weight,status\nSKU-1,Mug,4.5,0.35,active\nSKU-2,Cup,3,0.2,active\nSKU-3,Jug,12,heavy,draft\n"
UPDATE = ("sku,title,price,weight,status\nSKU-1,Mug,5.5,0.35,active\nSKU-2,Cup,3.5,0.2,active\n"
          "SKU-3,Jug,15,heavy,draft\nSKU-4,Bowl,8,1,active\n")
FIRST_FILE, UPDATE_FILE = "a_products.csv", "b_update.csv"


def write_spec(path: Path, *, weight_type: str = "text") -> Path:
    path.write_text(SPEC % {"weight_type": weight_type, "secret": WEBHOOK_SECRET_ENV}, encoding="utf-8")
    return path


def write_supplier_files(folder: Path) -> list[Path]:
    """The two supplier files, as a supplier sends them, to upload in this order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / FIRST_FILE, folder / UPDATE_FILE]
    for path, text in zip(paths, (FIRST, UPDATE), strict=True):
        path.write_text(text, encoding="utf-8")
    return paths


def claro_command() -> list[str]:
    """The console script a user types (`claro = "claro_dagster.cli:main"`), from this interpreter's environment."""
    beside = Path(sys.executable).with_name("claro")
    script = str(beside) if beside.is_file() else shutil.which("claro")
    assert script, f"no `claro` script beside {sys.executable} or on PATH: install the project (`pip install -e .`)"
    return [script]


def claro(*args: str, home: Path, spec: Path, user: str = "tester", stdin: str | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `claro ARGS` as a user would, on this checkout's code, with CLARO_HOME and CLARO_SPEC set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARO_")}
    env.update(CLARO_HOME=str(home), CLARO_SPEC=str(spec), CLARO_USER=user, PYTHONPATH=str(REPO),
               COLUMNS="200", NO_COLOR="1", PYTHONIOENCODING="utf-8")
    env[WEBHOOK_SECRET_ENV] = "test-secret"
    return subprocess.run([*claro_command(), *args], env=env, cwd=home, capture_output=True, text=True,
                          input=stdin, timeout=timeout)
