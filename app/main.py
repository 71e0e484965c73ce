"""DPMesh Studio entry point: ``python -m app.main [FILE]`` (or the ``dpmesh-studio`` command).

With a file (image, video or ``.dpmesh`` project) it opens that; without one it opens the demo scene.
No torch here: the window appears first, models load on the inference worker thread.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from types import TracebackType

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from .runtime import pin_singletons

log = logging.getLogger("app")


def install_excepthook(app: QApplication) -> None:
    """Uncaught exceptions (in slots too) → logged and shown in a dialog; the app keeps running."""

    def hook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        text = "".join(traceback.format_exception(etype, value, tb))
        log.error("uncaught exception:\n%s", text)
        if QApplication.instance() is None:
            sys.__excepthook__(etype, value, tb)
            return
        box = QMessageBox(QMessageBox.Icon.Critical, "Unexpected error",
                          f"{etype.__name__}: {value}\n\nYour edits are kept (autosave is on). Details below.")
        box.setDetailedText(text)
        box.open()

    sys.excepthook = hook


def configure_runtime() -> None:
    """Process-wide settings of the app (not the library): the reference-count pin of ``app.runtime``,
    and a short GIL switch interval, so the GUI thread gets the interpreter back within ~1 ms while the
    inference worker runs Python code."""
    pin_singletons()
    sys.setswitchinterval(0.001)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dpmesh-studio", description="DPMesh Studio desktop app")
    p.add_argument("file", nargs="?", help="image, video or .dpmesh project to open (default: the demo scene)")
    p.add_argument("--no-recovery", action="store_true", help="do not offer to restore autosaved work")
    p.add_argument("--autosave", type=int, default=60, help="autosave interval in seconds (default 60)")
    p.add_argument("--quit-after", type=float, default=None, metavar="S",
                   help="close the window after S seconds (scripted screenshots, smoke runs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_runtime()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("DPMesh Studio")
    app.setOrganizationName("dpmesh-studio")
    install_excepthook(app)
    from .main_window import MainWindow

    win = MainWindow(settings=QSettings("dpmesh-studio", "DPMesh Studio"))
    win.show()
    log.info("window shown after %.2f s", time.perf_counter() - t0)

    def start() -> None:
        recovered = False if args.no_recovery else win.offer_recovery()
        if args.file:
            win.open_path(args.file)
        elif not recovered:
            win.session.open_demo()
        win.session.start_autosave(args.autosave)
        win.session.start_background()

    QTimer.singleShot(0, start)
    if args.quit_after:
        win._no_prompt = True
        QTimer.singleShot(int(args.quit_after * 1000), win.close)
    code = app.exec()
    win.deleteLater()  # tear the window (and its worker threads) down before the interpreter
    app.processEvents()
    return code


if __name__ == "__main__":
    sys.exit(main())
