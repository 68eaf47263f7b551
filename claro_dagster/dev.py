"""`claro dev`: the Dagster UI, daemon and code servers of one project, the address links point at, and a clean stop.

`dagster dev` starts the webserver, the daemon and the code servers as its children. `claro dev` starts it in a
process group of its own and, on Ctrl-C, TERM or HUP, interrupts that whole group (as Ctrl-C in a terminal
would), then kills what is still running after `STOP_GRACE` seconds, so nothing it started outlives it.

While it runs, the address of its UI is recorded in `<home>/dagster/webserver.json`, so the commands that make
links from another shell (`claro run`, `claro serve` for slash commands and webhooks) point at the same port.
No Dagster import here: `claro serve` and the read-only commands ask for the address cheaply.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

#: Seconds the processes get to finish after the interrupt, before they are killed (all gone within 10 s).
STOP_GRACE = 6.0
DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"
WEBSERVER_URL_ENV = "CLARO_WEBSERVER_URL"
RECORD = "webserver.json"
_STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def link_url(host: str, port: int) -> str:
    """The address links give for a UI listening on host:port (a wildcard address is reached on loopback)."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _record_path(home: Path) -> Path:
    return Path(home) / "dagster" / RECORD


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def recorded_webserver(home: Path, url: str) -> Iterator[None]:
    """Record, while the block runs, that this process serves the project's Dagster UI at `url`."""
    path = _record_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "pid": os.getpid()}), encoding="utf-8")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                path.unlink()


def webserver_url(home: Path | None = None) -> str:
    """The Dagster UI links point at: $CLARO_WEBSERVER_URL, else the running `claro dev` of this project home,
    else the default `claro dev` address."""
    if os.environ.get(WEBSERVER_URL_ENV):
        return os.environ[WEBSERVER_URL_ENV]
    if home is not None:
        try:
            record = json.loads(_record_path(home).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and isinstance(record.get("pid"), int) and _alive(record["pid"]) \
                and isinstance(record.get("url"), str):
            return record["url"]
    return DEFAULT_WEBSERVER_URL


class _Stop(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """Interrupt the process group `proc` leads, wait up to `grace` seconds for all of it, then kill the rest."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or the group never looks empty
        if not _group_alive(pgid):
            break
        time.sleep(0.1)
    else:
        print(f"claro dev: processes still running {grace:.0f} s after the interrupt were killed", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def supervise(command: Sequence[str], env: dict[str, str], *, grace: float = STOP_GRACE) -> int:
    """Run `command` in its own process group until it exits, or until this process gets Ctrl-C, TERM or HUP:
    then stop the whole group (`stop_group`). Returns the command's exit code, 0 after a requested stop."""

    def on_signal(signum, frame):  # noqa: ANN001 - the signal module's handler protocol
        raise _Stop(signum)

    proc = subprocess.Popen(list(command), env=env, start_new_session=True)
    previous = {s: signal.signal(s, on_signal) for s in _STOP_SIGNALS}
    try:
        return proc.wait()
    except _Stop:
        for s in _STOP_SIGNALS:  # a second Ctrl-C while stopping must not leave the group half-stopped
            signal.signal(s, signal.SIG_IGN)
        stop_group(proc, grace)
        return 0
    finally:
        if proc.poll() is None:  # any other way out (an error here) stops the group too
            stop_group(proc, grace)
        for s, handler in previous.items():
            signal.signal(s, handler)
