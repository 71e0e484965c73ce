"""Training panel: run the headless ``dpmesh train CONFIG --json`` in a separate process, plot its losses
and metrics live from the JSON-lines events (pyqtgraph), stop it."""

from __future__ import annotations

from collections import defaultdict

import pyqtgraph as pg
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..jobs import TrainingProcess

COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c"]


class TrainingPanel(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.proc = TrainingProcess(self)
        self.config_edit = QLineEdit()
        self.config_edit.setPlaceholderText("training config (.yaml)")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        self.start_btn = QPushButton("Start")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        self.start_btn.clicked.connect(self.start)
        self.stop_btn.clicked.connect(self.stop)
        self.state = QLabel("idle")
        row = QHBoxLayout()
        row.addWidget(self.config_edit, 1)
        row.addWidget(browse)
        row.addWidget(self.start_btn)
        row.addWidget(self.stop_btn)
        self.loss_plot = pg.PlotWidget(title="losses")
        self.loss_plot.addLegend(offset=(5, 5))
        self.loss_plot.setLabel("bottom", "step")
        self.metric_plot = pg.PlotWidget(title="eval metrics")
        self.metric_plot.addLegend(offset=(5, 5))
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(row)
        lay.addWidget(self.state)
        lay.addWidget(self.loss_plot, 2)
        lay.addWidget(self.metric_plot, 1)
        lay.addWidget(self.log, 1)
        self.proc.event.connect(self.on_event)
        self.proc.log.connect(self.log.appendPlainText)
        self.proc.finished.connect(self._on_finished)
        self.reset()

    def reset(self) -> None:
        self.series: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        self.metrics: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        self._curves: dict[str, pg.PlotDataItem] = {}
        self._mcurves: dict[str, pg.PlotDataItem] = {}
        self.loss_plot.clear()
        self.metric_plot.clear()
        self.last_step = 0

    def _browse(self) -> None:
        fn, _ = QFileDialog.getOpenFileName(self, "Training config", "", "YAML (*.yaml *.yml);;All files (*)")
        if fn:
            self.config_edit.setText(fn)

    def start(self, program: tuple[str, list[str]] | None = None) -> None:
        cfg = self.config_edit.text().strip()
        if not cfg and program is None:
            self.state.setText("choose a config file first")
            return
        self.reset()
        self.log.clear()
        self.proc.start(cfg, program=program if isinstance(program, tuple) else None)
        self.start_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        self.state.setText("running…")

    def stop(self) -> None:
        self.proc.stop()

    def shutdown(self) -> None:
        self.proc.stop(2000)

    def _curve(self, store: dict, plot: pg.PlotWidget, name: str) -> pg.PlotDataItem:
        if name not in store:
            store[name] = plot.plot([], [], name=name, pen=pg.mkPen(COLORS[len(store) % len(COLORS)], width=2))
        return store[name]

    def on_event(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "step":
            step = int(ev.get("step", self.last_step + 1))
            self.last_step = step
            values = {"loss": ev.get("loss")}
            values.update(ev.get("losses") or {})
            for k, v in values.items():
                if v is None:
                    continue
                xs, ys = self.series[k]
                xs.append(step)
                ys.append(float(v))
                self._curve(self._curves, self.loss_plot, k).setData(xs, ys)
            self.state.setText(f"step {step} · loss {ev.get('loss', float('nan')):.4g} · lr {ev.get('lr', 0):.2g}")
        elif kind == "eval":
            for k, v in (ev.get("metrics") or {}).items():
                if not isinstance(v, (int, float)):
                    continue
                xs, ys = self.metrics[k]
                xs.append(self.last_step)
                ys.append(float(v))
                self._curve(self._mcurves, self.metric_plot, k).setData(xs, ys, symbol="o")
        elif kind == "done":
            self.state.setText(f"done after step {self.last_step}")
        elif kind == "error":
            self.state.setText(f"error: {ev.get('message', '')}")

    def _on_finished(self, code: int, how: str) -> None:
        self.start_btn.setEnabled(True)
        self.stop_btn.setEnabled(False)
        if not self.state.text().startswith("done"):
            self.state.setText(f"process {how} (exit code {code})")
