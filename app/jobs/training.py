"""``TrainingProcess``: the headless ``dpmesh train CONFIG --json`` in a ``QProcess``; one signal per
JSON-lines event."""

from __future__ import annotations

import json
import sys

from PySide6.QtCore import QObject, QProcess, Signal


class TrainingProcess(QObject):
    """``python -m dpmesh_core.cli train CONFIG --json`` in a QProcess; one signal per JSON-lines event.

    Signals: event(dict) for each JSON line, log(str) for other output, finished(exit_code, status_text).
    """

    event = Signal(dict)
    log = Signal(str)
    finished = Signal(int, str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.proc: QProcess | None = None
        self._buf = b""

    def command(self, config_path: str, extra: list[str] | None = None) -> tuple[str, list[str]]:
        return sys.executable, ["-m", "dpmesh_core.cli", "train", str(config_path), "--json", *(extra or [])]

    def start(self, config_path: str, extra: list[str] | None = None, program: tuple[str, list[str]] | None = None,
              cwd: str | None = None) -> None:
        """Start training; ``cwd``: the process's working folder (relative paths of the config are read from
        there)."""
        if self.is_running():
            raise RuntimeError("training is already running")
        prog, args = program or self.command(config_path, extra)
        self.proc = QProcess(self)
        if cwd:
            self.proc.setWorkingDirectory(str(cwd))
        self.proc.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        self.proc.readyReadStandardOutput.connect(self._read_stdout)
        self.proc.readyReadStandardError.connect(self._read_stderr)
        self.proc.finished.connect(self._on_finished)
        self.proc.errorOccurred.connect(self._on_error)
        self._buf = b""
        self.proc.start(prog, args)

    def _on_error(self, err: QProcess.ProcessError) -> None:
        self.log.emit(f"process error: {err.name if hasattr(err, 'name') else err}")

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.state() != QProcess.ProcessState.NotRunning

    def stop(self, timeout_ms: int = 5000) -> None:
        if not self.is_running():
            return
        assert self.proc is not None
        self.proc.terminate()
        if not self.proc.waitForFinished(timeout_ms):
            self.proc.kill()
            self.proc.waitForFinished(2000)

    def _read_stdout(self) -> None:
        assert self.proc is not None
        self._buf += bytes(self.proc.readAllStandardOutput())
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            self._handle_line(raw.decode("utf-8", "replace").strip())

    def _handle_line(self, line: str) -> None:
        if not line:
            return
        if line.startswith("{"):
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                self.log.emit(line)
                return
            if isinstance(ev, dict) and "event" in ev:
                self.event.emit(ev)
                return
        self.log.emit(line)

    def _read_stderr(self) -> None:
        assert self.proc is not None
        text = bytes(self.proc.readAllStandardError()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self.log.emit(line)

    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        if self._buf:
            self._handle_line(self._buf.decode("utf-8", "replace").strip())
            self._buf = b""
        self.finished.emit(int(code), "crashed or stopped" if status == QProcess.ExitStatus.CrashExit else "exited")
