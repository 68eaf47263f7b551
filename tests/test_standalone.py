"""The repository stands on its own: nothing in the code, tests or benchmarks reads files beside the clone.

A fresh clone has no `shared/` folder next to it (CI's copy is there only by accident of where it runs),
so any contract or vector a test needs lives under `tests/contracts/`.
"""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"""\.\./shared|["']shared["']\s*/|shared/contracts|parents\[\d+\]\.parent\b""")


def test_no_file_reaches_outside_the_repository():
    offenders = []
    for folder in ("claro_dagster", "tests", "benchmarks", ".ci"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".sh", "") and path != Path(__file__).resolve():
                text = path.read_text(errors="replace")
                offenders += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                              if OUTSIDE.search(line)]
    assert not offenders, f"these lines read outside the repository: {offenders}"


def test_every_copied_contract_is_named_in_the_contracts_readme():
    contracts = REPO / "tests" / "contracts"
    readme = (contracts / "README.md").read_text()
    files = [p.relative_to(contracts).as_posix() for p in contracts.rglob("*") if p.is_file() and p.name != "README.md"]
    assert files and all(f"`{f}`" in readme for f in files), [f for f in files if f"`{f}`" not in readme]
