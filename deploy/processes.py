"""Real processes started by Strata's deployment tooling, stopped by their PID (never by name).

Each process is started in a session of its own (its process group id is the PID we started).
Flower detaches some of its children (the SuperLink starts its SuperExec in a new session), so
`stop` first takes the tree of descendants by parent PID (from /proc), then sends SIGTERM to
the group, waits, and SIGKILLs whatever of that tree is still alive.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

GRACE_S = 10.0
"""How long a stopped process may take to exit after SIGTERM before it is killed."""


def descendants(pid: int) -> list[int]:
    """Return the PIDs below `pid` in the process tree (children first), from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], *, timeout_s: float, what: str) -> None:
    """Wait until something listens on 127.0.0.1:`port`; fail if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before listening on port {port}.")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout_s:.0f} s.")


@dataclass
class Processes:
    """The processes one deployment started, by name; a context manager that stops them all."""

    log_dir: Path
    env: dict[str, str]
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: Sequence[str], *, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` as `name`, its output in `log_dir/<name>.log`."""
        if name in self.started:
            raise ValueError(f"a process named {name!r} was already started.")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as out:
            process = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=cwd, start_new_session=True
            )
        self.started[name] = process
        log.info("started %s (pid %d)", name, process.pid)
        return process

    def log_path(self, name: str) -> Path:
        """Return where `name`'s output goes."""
        return self.log_dir / f"{name}.log"

    def kill(self, name: str) -> None:
        """SIGKILL `name` and its descendants at once (a fault, not a shutdown)."""
        process = self.started[name]
        tree = descendants(process.pid)
        if process.poll() is None:
            _signal(process.pid, signal.SIGKILL)
            process.wait()
        for pid in tree:
            _signal(pid, signal.SIGKILL)
        log.info("killed %s (pid %d) and %d descendants", name, process.pid, len(tree))

    def stop(self, name: str) -> int | None:
        """Stop `name`: SIGTERM to its group, SIGKILL after the grace period, then to any descendant left."""
        process = self.started.pop(name)
        tree = descendants(process.pid)
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                self._kill_leftover_group(process.pid)
                process.wait()
            except ProcessLookupError:
                pass
        self._kill_leftover_group(process.pid)
        for pid in tree:
            _signal(pid, signal.SIGKILL)
        return process.returncode

    def stop_all(self) -> None:
        """Stop every process still held, the last started first."""
        for name in reversed(list(self.started)):
            self.stop(name)

    @staticmethod
    def _kill_leftover_group(pgid: int) -> None:
        """Children of a stopped leader may outlive it in its group: kill what is left of that group."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
