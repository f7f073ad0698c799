"""Noticing hand edits without waking up for them: a watch on one folder for a few file names.

On Linux the kernel tells us (inotify, through ctypes: the standard library has no binding), so an
idle actor sleeps until a file it cares about really changed, and an edit is seen at once. Where
inotify is missing (another OS, a full watch table) the caller falls back to a stat poll every
``poll_s``. Either way the caller still compares stat stamps before acting: the watch only says
*when* to look, never *what* changed, so a missed or spurious event costs at most one stat.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
WATCHED_EVENTS = (IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
                  | IN_DELETE_SELF | IN_MOVE_SELF)
LOST_TRACK = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF  # events were lost or the folder went away
EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (the name follows, NUL padded)
READ_BYTES = 64 * 1024

# With the kernel watching, a stat now and then still guards against the watch itself failing silently.
SAFETY_POLL_S = 60.0


class FolderWatch:
    """Readable (``fileno()``) when one of ``names`` in ``folder`` was created, written, renamed or removed."""

    def __init__(self, folder: Path, names: Iterable[str], poll_s: float) -> None:
        self.folder = folder
        self.names = {os.fsencode(name) for name in names}
        self.fd = _inotify_watch(folder)
        self.poll_s = SAFETY_POLL_S if self.fd is not None else poll_s

    def fileno(self) -> int | None:
        """The descriptor to poll, or None when there is no kernel watch (poll every ``poll_s`` instead)."""
        return self.fd

    def drain(self) -> bool:
        """Read every waiting event; True when one concerns a watched name (or the watch lost track)."""
        if self.fd is None:
            return True
        relevant = False
        while True:
            try:
                data = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                return relevant
            except OSError as exc:  # not expected from inotify: look at the files, as after lost events
                log.warning("file watch on %s: %s", self.folder, exc)
                return True
            if not data:
                return relevant
            relevant = _mentions(data, self.names) or relevant

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _mentions(data: bytes, names: set[bytes]) -> bool:
    """Whether a buffer of inotify events names one of ``names`` or says that events were lost."""
    offset = 0
    while offset + EVENT_HEADER.size <= len(data):
        _, mask, _, length = EVENT_HEADER.unpack_from(data, offset)
        name = data[offset + EVENT_HEADER.size: offset + EVENT_HEADER.size + length].rstrip(b"\0")
        if mask & LOST_TRACK or name in names:
            return True
        offset += EVENT_HEADER.size + length
    return False


def _inotify_watch(folder: Path) -> int | None:
    """A non-blocking inotify descriptor watching folder, or None where the kernel cannot give one."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add_watch = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None  # not Linux
    fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        log.warning("no inotify (%s): hand edits are polled", os.strerror(ctypes.get_errno()))
        return None
    if add_watch(fd, os.fsencode(folder), WATCHED_EVENTS) < 0:
        code = ctypes.get_errno()
        os.close(fd)
        if code != errno.ENOENT:
            log.warning("cannot watch %s (%s): hand edits are polled", folder, os.strerror(code))
        return None
    return fd
