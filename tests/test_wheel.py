"""A wheel install (not editable) still finds the bundled demo: it ships as package data (issue 8 item 12).

The wheel is built from a copy of the sources (nothing written into the checkout) without build isolation (no
network), and installed without its dependencies into a throw-away venv that does not see this environment's
site-packages; only the dependencies are then made importable from here, by a path file that adds the directory
after the venv's own (its `.pth` files, such as this checkout's editable install, are not run), so
`claro_dagster` is imported from the wheel and nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_install_runs_the_bundled_demo(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "claro_dagster", source / "claro_dagster",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", str(source), "-w", str(tmp_path / "dist")], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("claro_dagster-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")

    work = tmp_path / "work"  # no claro.yaml here, no CLARO_SPEC: the bundled demo is the spec
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLARO_", "PYTHON"))}
    env.update(CLARO_HOME=str(work / ".claro"), NO_COLOR="1", COLUMNS="200")
    where = subprocess.run([str(python), "-c", "import claro_dagster.spec as s; print(s.__file__); "
                            "print(s.default_spec_path())"], capture_output=True, text=True, cwd=work, env=env)
    assert where.returncode == 0, where.stderr
    module, spec = where.stdout.split()
    assert Path(module).is_relative_to(site) and Path(spec).is_relative_to(site), where.stdout
    assert Path(spec).is_file() and (Path(spec).parent / "inbox" / "globex" / "globex_products.xlsx").is_file()
    assert (Path(spec).parent / "reference" / "gtin_company_prefixes.csv").is_file()  # the demo's enrichment lookup
    assert (Path(spec).parent / "competitors" / "prices.csv").is_file()  # the demo price monitor's data

    checked = subprocess.run([str(env_dir / "bin" / "claro"), "check"], capture_output=True, text=True, cwd=work,
                             env=env, timeout=300)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("claro.yaml: OK — 2 catalogues")  # the demo's
