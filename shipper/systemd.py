"""sd_notify without libsystemd: READY, STOPPING and watchdog pings for `Type=notify` units."""

from __future__ import annotations

import asyncio
import os
import socket


def notify(message: str) -> bool:
    """Send one notification to systemd; a no-op (False) when not started by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


async def watchdog() -> None:
    """Ping the watchdog at half its interval while the event loop is responsive."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return
    interval = int(usec) / 2_000_000
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
