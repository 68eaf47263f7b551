"""Running a parser on an untrusted file where its failure cannot take the caller down.

The native readers (python-calamine, pyarrow) abort the whole process on an allocation they cannot
make, and a crafted file can ask for hundreds of gigabytes. So the parse runs in a child process with
an address-space limit (RLIMIT_AS), a CPU limit and a wall-clock timeout; a crash, a signal, a
MemoryError or a timeout there becomes a ``SupplierFileError`` naming the file and what to do.

Children come from a fork server that has already imported pandas, pyarrow and the readers, so a read
pays a fork (milliseconds), not an interpreter start (seconds). Results come back as Arrow IPC files in
a temporary folder, read in the parent without pickling frames.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import pickle
import re
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from pathlib import Path
from typing import Any

from claro_dagster.operations.read.common import ReadLimits, SupplierFileError, human_size

OUTCOME = "outcome.pickle"
STDERR = "stderr.txt"
_PRELOAD = ["claro_dagster.operations.read", "charset_normalizer", "claro_dagster.operations.read.warm"]
_lock = threading.Lock()
_context: multiprocessing.context.BaseContext | None = None


def _mp_context() -> multiprocessing.context.BaseContext:
    """The fork-server context (spawn where there is none), its server preloading the readers."""
    global _context
    with _lock:
        if _context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(_PRELOAD)
            else:
                ctx = multiprocessing.get_context("spawn")
            _context = ctx
        return _context


def _process(ctx: multiprocessing.context.BaseContext, **kwargs) -> multiprocessing.process.BaseProcess:
    if ctx.get_start_method() == "forkserver":
        return _ReaderProcess(**kwargs)
    return ctx.Process(**kwargs)


class _ReaderPopen(popen_forkserver.Popen):
    """A fork-server launch that does not ask the child to import the main script again.

    multiprocessing re-runs ``__main__`` in every child so objects defined there unpickle; the reader's
    jobs live in this package, and re-running the ``claro`` command's script would import Dagster in
    every child (a second per file). Same steps as the standard launch otherwise (Python 3.11-3.12).
    """

    def _launch(self, process_obj):
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _ReaderProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return _ReaderPopen(process_obj)


@contextlib.contextmanager
def contained(target: Callable[..., Any], args: tuple, *, file: str, limits: ReadLimits, seconds: float,
              diagnose: Callable[[], str | None] | None = None) -> Iterator[tuple[Any, Path]]:
    """Run ``target(out_dir, *args)`` in a confined child; yield (its return value, out_dir).

    ``target`` writes what it produces into ``out_dir`` (removed when the block ends) and returns a small
    picklable value. A SupplierFileError raised by ``target`` is raised here as is. ``diagnose`` explains,
    after a crash or timeout, what in the file caused it (None when it cannot tell).
    """
    with tempfile.TemporaryDirectory(prefix="claro-read-") as folder:
        out = Path(folder)
        cpu = int(seconds) + 10
        process = _process(
            _mp_context(), target=_child_main, args=(target, args, str(out), limits.memory_bytes, cpu),
            name=f"claro-read {file}", daemon=True,
        )
        process.start()
        try:
            process.join(seconds)
        finally:  # a timeout, or Ctrl+C in the parent: the child does not outlive the call
            timed_out = process.exitcode is None
            if timed_out:
                process.kill()
                process.join()
        exitcode = process.exitcode
        process.close()
        outcome = None if timed_out else _load(out / OUTCOME)
        if outcome is None:
            why = diagnose() if diagnose is not None else None
            stderr = _child_stderr(out)
            raise SupplierFileError(file, _failure_reason(timed_out, seconds, stderr, limits, why, exitcode))
        kind, payload = outcome
        if kind == "ok":
            yield payload, out
            return
        if kind == "supplier":
            raise payload
        if kind == "oserror":
            raise payload  # the file vanished or cannot be opened: not the supplier's doing
        why = diagnose() if diagnose is not None else None
        if kind == "memory":
            raise SupplierFileError(file, _failure_reason(False, seconds, "MemoryError", limits, why, exitcode))
        if kind == "recursion":
            raise SupplierFileError(
                file, why or "the file is nested too deeply for the reader (RecursionError); open it in Excel, "
                "save it again (or export CSV UTF-8) and send it again"
            )
        error = SupplierFileError(
            file, f"the reader failed on this file ({payload}); open it in Excel, save it again (or export CSV "
            "UTF-8) and send it again; if the error stays, report it with the file"
        )
        error.add_note(f"traceback in the reading process:\n{_child_stderr(out)}")
        raise error


def _child_stderr(out: Path) -> str:
    """What the child said on its way out (its stderr, which a native abort writes to)."""
    try:
        return (out / STDERR).read_text(errors="replace")[-4000:]
    except OSError:
        return ""


_ALLOC = re.compile(r"memory allocation of (\d+) bytes failed")


def _failure_reason(timed_out: bool, seconds: float, stderr: str, limits: ReadLimits, why: str | None,
                    exitcode: int | None) -> str:
    resave = "open it in Excel, save it again (or export CSV UTF-8) and send it again"
    if why:
        return f"refused: {why}"
    if timed_out or exitcode == -signal.SIGXCPU:
        return (f"reading it took longer than {seconds:,.0f} seconds and was stopped; a product file reads in "
                f"seconds, so the file is damaged or built to exhaust the reader; {resave}")
    alloc = _ALLOC.search(stderr)
    if alloc or "MemoryError" in stderr or "bad_alloc" in stderr or exitcode == -signal.SIGKILL:
        asked = f" (it asked for {human_size(int(alloc.group(1)))} at once)" if alloc else ""
        return (f"reading it needed more than the {human_size(limits.memory_bytes)} of memory a file may use"
                f"{asked}; the file is far larger than it looks or built to exhaust the reader; {resave}")
    return f"the spreadsheet reader crashed on this file ({_crash_text(stderr, exitcode)}); {resave}"


def _crash_text(stderr: str, exitcode: int | None) -> str:
    how = f"exit code {exitcode}"
    if exitcode is not None and exitcode < 0:
        try:
            how = signal.Signals(-exitcode).name
        except ValueError:
            how = f"signal {-exitcode}"
    line = next((s.strip() for s in stderr.splitlines() if s.strip()), "")
    return f"{how}: {line[:200]}" if line else how


def _load(path: Path) -> tuple[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError):
        return None


# --------------------------------------------------------------------------------------------
# the child


def _child_main(target: Callable[..., Any], args: tuple, out_dir: str, memory_bytes: int, cpu_seconds: int) -> None:
    _confine(out_dir, memory_bytes, cpu_seconds)
    try:
        outcome: tuple[str, Any] = ("ok", target(Path(out_dir), *args))
    except SupplierFileError as exc:
        outcome = ("supplier", exc)
    except MemoryError:
        outcome = ("memory", None)
    except RecursionError:
        outcome = ("recursion", None)
    except OSError as exc:
        outcome = ("oserror", exc)
    except Exception as exc:  # a reader defect or a file no reader expects: reported, never raised raw
        traceback.print_exc()
        outcome = ("failed", f"{type(exc).__name__}: {str(exc)[:500]}")
    tmp = Path(out_dir) / (OUTCOME + ".part")
    try:
        data = pickle.dumps(outcome)
    except Exception as exc:  # an exception that does not pickle: its text travels instead
        data = pickle.dumps(("failed", f"{type(outcome[1]).__name__}: {str(outcome[1])[:500]} ({exc})"))
    tmp.write_bytes(data)
    tmp.rename(Path(out_dir) / OUTCOME)


def _confine(out_dir: str, memory_bytes: int, cpu_seconds: int) -> None:
    """Limits of the child: address space (its current size plus ``memory_bytes``), CPU time, no core dumps;
    stderr goes to a file so the parent can tell a native abort's message."""
    fd = os.open(os.path.join(out_dir, STDERR), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle; it kills us
    try:
        import resource
    except ImportError:  # not on POSIX: the timeout still applies
        return
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _lower(resource, resource.RLIMIT_CPU, cpu_seconds)
    _lower(resource, resource.RLIMIT_AS, _address_space() + memory_bytes)


def _lower(resource, which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    if soft == resource.RLIM_INFINITY or value < soft:
        resource.setrlimit(which, (value, hard))


def _address_space() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
