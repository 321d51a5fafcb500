"""Run a command whose whole process tree ends with its launcher: kill -9, kill or Ctrl-C of the launcher.

    python -m foodie.process_guard PARENT_PID -- xtuner train ...

``xtuner train`` starts the real trainer as a child of its own (and torchrun starts one per GPU), so killing
the command's first process is not enough. The guard is the leader of a new process group holding the
whole tree; Linux sends it SIGTERM when its parent (the launcher) dies, however it died
(``PR_SET_PDEATHSIG``), and it then ends the group: SIGTERM, and SIGKILL after a grace period. It passes
the command's exit status through. ``foodie.training`` starts it with ``start_new_session=True``.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE_SECONDS = 10.0


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def end_group(pgid: int, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every process of the group but the caller, then SIGKILL what is left after ``grace`` s."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the guard outlives its own killpg
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap our direct child so it does not count as alive
                pass
        except ChildProcessError:
            pass
        if not group_has_others(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)  # the guard itself dies here too
    except ProcessLookupError:
        pass


def _group(pgid: int) -> dict[int, str]:
    """{pid: command line} of the live (not zombie) processes in group ``pgid``, from /proc (empty without it)."""
    found = {}
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:  # no /proc (not Linux): nothing can be inspected
        return found
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
    return found


def group_has_others(pgid: int) -> bool:
    """True when a live process other than this one is in process group ``pgid``."""
    return bool(set(_group(pgid)) - {os.getpid()})


def group_commands(pgid: int) -> list[str]:
    """Command lines of the live processes in group ``pgid`` (empty when the group is gone)."""
    return list(_group(pgid).values())


def main(argv: list[str]) -> int:
    parent, sep, command = argv[0], argv[1], argv[2:]
    assert sep == "--" and command, "usage: python -m foodie.process_guard PARENT_PID -- COMMAND ..."
    die_with_parent()
    pgid = os.getpgid(0)

    def stop(signum, frame):
        end_group(pgid)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    if os.getppid() != int(parent):  # the launcher died before the prctl above took effect
        return 1
    proc = subprocess.Popen(command)
    while True:
        try:
            return proc.wait()
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
