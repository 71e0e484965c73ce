"""The app's structure, checked by machine: the worker processes' modules import no Qt; importing the app
changes no process-wide state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_worker_server_modules_import_no_qt():
    """The inference and render processes run ``python -m app.jobs``: importing their modules (and the
    entry itself) in a fresh interpreter loads no PySide6 (and no torch: the estimator loads it later)."""
    code = ("import sys, runpy\n"
            "import app.jobs.inference_server, app.jobs.render_server, app.jobs.protocol, app.jobs.ipc\n"
            "sys.argv = ['app.jobs']\n"
            "try:\n"
            "    runpy.run_module('app.jobs', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code == 2, e.code\n"  # the usage message: the entry ran, nothing to serve
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'torch')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: python -m app.jobs" in out.stderr


def test_importing_the_app_changes_no_process_state_until_main_applies_it():
    """The refcount pin of PySide6's emit (``app.runtime.pin_singletons``) is applied by the app's start
    (``app.main.configure_runtime``) and by constructing a ``Session`` (scripts and tests that drive the app
    without ``app.main``), never as a side effect of importing the app's modules."""
    code = ("import sys\n"
            "import app, app.session, app.main_window, app.main\n"
            "before = sys.getrefcount(True) < 1 << 39\n"
            "from PySide6.QtWidgets import QApplication\n"
            "qapp = QApplication([])\n"
            "s = app.session.Session()\n"
            "pinned = sys.getrefcount(True) > 1 << 39\n"
            "s.shutdown()\n"
            "app.main.configure_runtime()\n"
            "print(before, pinned, sys.getswitchinterval())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 0, out.stderr[-3000:]
    before, pinned, interval = out.stdout.split()
    assert before == "True" and float(interval) == 0.001
    assert pinned == str(sys.version_info < (3, 12))  # CPython >= 3.12: True is immortal, nothing to pin
