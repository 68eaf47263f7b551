"""How fast the command line answers: read-only commands on the demo, through the real `claro` entry point.

    python benchmarks/cli.py                 # 5 warm runs per command
    python benchmarks/cli.py --repeat 9

Each command runs as a user types it (the `claro` console script beside this Python), in its own process, on the
bundled demo (no claro.yaml in the working directory, no CLARO_SPEC) with a project home that `claro run` filled
first (not measured). Wall clock from process start to exit, stdout and stderr discarded.

- cold: the command's first run in this benchmark. All cold runs come before any warm one, so each pays for what
  earlier commands did not bring into the operating system's file cache; the first pays most. (Python's bytecode
  caches exist, as after any install.)
- warm: the median of `--repeat` further runs.

Baselines measured in the same run, the same way: `python -c pass` (the interpreter's own start, the floor of any
Python command) and `python -c "import dagster"` (what every command paid before it stopped importing Dagster).
Target (issue 8 item 6): every read-only command within 1 s wall clock, cold and warm; the ratio to `python -c
pass` says how much of that is claro's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 1.0
OUT = Path(__file__).resolve().parent / "out"


def claro_script() -> str:
    beside = Path(sys.executable).with_name("claro")
    script = str(beside) if beside.is_file() else shutil.which("claro")
    if not script:
        sys.exit("no `claro` script beside this Python or on PATH: install the project (`pip install -e .`)")
    return script


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system) of `command` from start to exit; it must succeed."""
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, _children_cpu() - cpu


def median_of(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def prepare(home: Path, cwd: Path, env: dict[str, str], claro: str) -> str:
    """Fill the project home with the demo's batches (`claro run`); return a batch key for `claro rejected`."""
    from claro_dagster.catalogue.batches import BatchRegistry
    from claro_dagster.catalogue.store import CatalogueStore
    from claro_dagster.spec import DEMO_DIR, load_spec

    subprocess.run([claro, "run"], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = CatalogueStore(load_spec(DEMO_DIR / "claro.yaml"), home=home)
    try:
        return BatchRegistry(store).list()[0].key
    finally:
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="Warm runs per command (median reported).")
    args = parser.parse_args()
    claro = claro_script()
    with tempfile.TemporaryDirectory(prefix="claro-cli-bench-") as work:
        cwd = Path(work)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLARO_")}
        env.update(CLARO_HOME=str(cwd / ".claro"), COLUMNS="200", NO_COLOR="1")
        batch = prepare(cwd / ".claro", cwd, env, claro)
        commands = {
            "claro --help": [claro, "--help"],
            "claro check": [claro, "check"],
            "claro records": [claro, "records"],
            "claro history GLX-00421": [claro, "history", "GLX-00421"],
            "claro review list": [claro, "review", "list"],
            "claro batches": [claro, "batches"],
            "claro rejected BATCH": [claro, "rejected", batch],
            "claro schedules": [claro, "schedules"],
        }
        baselines = {
            "python -c pass": [sys.executable, "-c", "pass"],
            'python -c "import dagster"': [sys.executable, "-c", "import dagster"],
        }
        cold = {name: wall(cmd, env, cwd) for name, cmd in {**baselines, **commands}.items()}
        warm = {name: median_of([wall(cmd, env, cwd) for _ in range(args.repeat)])
                for name, cmd in {**baselines, **commands}.items()}
    floor_cold, floor_warm = cold["python -c pass"][0], warm["python -c pass"][0]
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; warm = median of "
          f"{args.repeat}; CPU = user + system seconds of the process\n")
    print("| command | cold s | warm s | warm CPU s | cold x `python -c pass` | warm x `python -c pass` | target 1 s |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in (*baselines, *commands):
        (c, _), (w, w_cpu) = cold[name], warm[name]
        met = "" if name in baselines else ("met" if max(c, w) <= TARGET_SECONDS else "missed")
        print(f"| {'baseline: ' if name in baselines else ''}`{name}` | {c:.2f} | {w:.2f} | {w_cpu:.2f} | "
              f"{c / floor_cold:.1f} | {w / floor_warm:.1f} | {met} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "cli.json").write_text(json.dumps({"cold": cold, "warm": warm, "load": load, "repeat": args.repeat},
                                             indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
