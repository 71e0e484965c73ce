"""DPMesh Studio, the desktop app.

Workaround, applied once per process that imports the app: PySide6 6.12's ``SignalInstance.emit`` drops
one reference to ``True`` per call (and some other Qt calls one to ``None``), so a long session runs their
reference counts down to zero and CPython aborts ("bool_dealloc: deallocating True or False"). In a
process that imported torch those counts start in the tens of thousands, which only postponed the
crash; the app process no longer imports torch. CPython >= 3.12 makes these objects immortal; before it,
they get a reference count no session can exhaust.
"""

import sys


def _pin_singletons() -> None:
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return
    import ctypes

    for obj in (None, True, False):
        refcnt = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt: the first field of every object
        if abs(refcnt.value - sys.getrefcount(obj)) > 64:
            return  # an unexpected object layout (e.g. a Py_TRACE_REFS build): leave it alone
        refcnt.value += 1 << 40


_pin_singletons()
