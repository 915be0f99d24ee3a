"""`python -I -S deathsig_exec.py PARENT_PID STATUS_FD COMMAND [ARGS...]`: become COMMAND, killed with
shipper (Linux).

The process source starts the wrapped command through this script so that the kernel sends it
SIGKILL when shipper dies, even by `kill -9` (PR_SET_PDEATHSIG survives execve): a wrapped API must
not run on with its logs going nowhere. Doing this in the forked child with `preexec_fn` is not safe
in a process that has threads (shipper has several), so the new process is a fresh interpreter that
sets the flag and execs. Stdlib only, and no site import: it runs in the child's cwd and environment.

If shipper died before the flag was set, the parent is already someone else: exit at once. A
failed exec writes its errno to STATUS_FD (closed on a successful exec), so shipper reports it
as it would a failed fork-exec.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    parent, status_fd, command = int(argv[1]), int(argv[2]), argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os.write(status_fd, str(ctypes.get_errno()).encode())
        return 127
    if os.getppid() != parent:  # shipper is already gone
        return 128 + signal.SIGKILL
    for name in ("SIGPIPE", "SIGXFSZ"):  # Python ignores these at startup; the command gets the defaults
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    os.set_inheritable(status_fd, False)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        os.write(status_fd, str(exc.errno).encode())
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
