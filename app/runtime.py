"""Process-wide workarounds of the app's GUI process, applied explicitly (never at import): by
``app.main.configure_runtime`` at the app's start, and by ``Session`` (the back end's composition root) for
code that drives the app without ``app.main`` (scripts, embedding, tests). No Qt here."""

from __future__ import annotations

import sys


def pin_singletons() -> None:
    """Workaround, applied once by the process that runs the GUI (``configure_runtime``): PySide6 6.12's
    ``SignalInstance.emit`` drops one reference to ``True`` per call (and some other Qt calls one to
    ``None``), so a long session runs their reference counts down to zero and CPython aborts
    ("bool_dealloc: deallocating True or False"). In a process that imported torch those counts start in
    the tens of thousands, which only postponed the crash; the app process no longer imports torch.
    CPython >= 3.12 makes these objects immortal; before it, they get a reference count no session can
    exhaust. Remove once PySide6 is fixed."""
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return
    import ctypes

    for obj in (None, True, False):
        refcnt = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt: the first field of every object
        if abs(refcnt.value - sys.getrefcount(obj)) > 64:
            return  # an unexpected object layout (e.g. a Py_TRACE_REFS build): leave it alone
        if refcnt.value < 1 << 39:
            refcnt.value += 1 << 40
