"""Importing the code location has no side effects and reads no spec until Dagster asks for the definitions
(issue 8 item 12): `defs` is a `@dg.definitions` function, which Dagster's loaders call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import os
import dagster as dg
from dagster._core.definitions.reconstruct import repository_def_from_target_def
import claro_dagster.definitions as location

print("imported", sorted(os.listdir(".")))
try:
    location.defs()
except Exception as exc:  # the broken ./claro.yaml is read now, when the definitions are asked for
    print("asked:", type(exc).__name__, str(exc).splitlines()[0])
os.environ["CLARO_SPEC"] = os.environ["GOOD_SPEC"]
repository = repository_def_from_target_def(location.defs)  # what Dagster does with the module's target
print("loaded", len(repository.assets_defs_by_key) > 0)
"""


def test_importing_the_code_location_reads_no_spec_and_writes_nothing(tmp_path):
    (tmp_path / "claro.yaml").write_text("catalogues: [not a spec\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARO_")}
    env.update(PYTHONPATH=str(REPO), GOOD_SPEC=str(REPO / "claro_dagster" / "demo" / "claro.yaml"),
               CLARO_HOME=str(tmp_path / "home"))
    ran = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "imported ['claro.yaml']"  # no project home, no store, nothing read or written
    assert lines[1].startswith("asked: SpecError ") and "claro.yaml:2" in lines[1]
    assert lines[2] == "loaded True"
