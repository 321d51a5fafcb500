"""Run a command whose whole process tree ends with its launcher: kill -9, kill or Ctrl-C of the launcher.

    python -m foodie.process_guard PARENT_PID -- xtuner train ...

``xtuner train`` starts the real trainer as its child (torchrun one per GPU), so killing the command's first
process is not enough. The guard leads a new process group holding the whole tree; Linux sends it SIGTERM when
the launcher dies, however it died (``PR_SET_PDEATHSIG``), and it then ends the group: SIGTERM, SIGKILL after a
grace period. It passes the command's exit status through.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


def end_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM every process of the group but the caller, then SIGKILL what is left after ``grace`` s."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the guard outlives its own killpg
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:  # reap our direct child so it does not count as alive
                    pass
            if not set(group_commands(pgid)) - {os.getpid()}:
                return
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)  # the guard itself dies here too


def group_commands(pgid: int) -> dict[int, str]:
    """{pid: command line} of the live (not zombie) processes in group ``pgid``, from /proc (empty without it)."""
    found = {}
    for pid in [int(e) for e in os.listdir("/proc") if e.isdigit()] if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
    return found


def main(argv: list[str]) -> int:
    parent, sep, command = argv[0], argv[1], argv[2:]
    assert sep == "--" and command, "usage: python -m foodie.process_guard PARENT_PID -- COMMAND ..."
    if sys.platform.startswith("linux"):  # SIGTERM to us when the launcher exits
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    pgid = os.getpgid(0)

    def stop(signum, frame):
        end_group(pgid)
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    if os.getppid() != int(parent):  # the launcher died before the prctl above took effect
        return 1
    return subprocess.Popen(command).wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
