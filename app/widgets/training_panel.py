"""Training panel: run the headless ``dpmesh train CONFIG --json`` in a separate process, plot its losses
and metrics live from the JSON-lines events (pyqtgraph), stop it.

Before starting it checks what it can without loading anything heavy: a config is chosen, it exists, and
the data files it names are there — relative data paths are read from the run folder shown in the panel
(the training process's working folder), and the panel says how to make the data when they are missing.
Long messages wrap inside the panel instead of widening the dock.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..jobs import TrainingProcess

BUNDLED_CONFIG = Path(__file__).resolve().parents[2] / "dpmesh_core" / "data" / "configs" / "tiny_synthetic.yaml"


def default_run_folder() -> Path:
    """Where training runs when the user has not chosen: the platform's documents folder / DPMesh."""
    import platformdirs

    return Path(platformdirs.user_documents_dir()) / "DPMesh"


def missing_data(config_path: str | os.PathLike, run_folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(data files the config names that do not exist, the ``dpmesh synth`` lines from its comments that make
    them). Relative paths are read from ``run_folder`` (the training process's working folder)."""
    import yaml

    text = Path(config_path).read_text(encoding="utf-8")
    try:
        data = (yaml.safe_load(text) or {}).get("data") or {}
    except (yaml.YAMLError, AttributeError):
        return [], []  # the training process reports a bad config in its own words
    paths = []
    for split in ("train", "val"):
        for entry in data.get(split) or []:
            if isinstance(entry, dict) and entry.get("path"):
                paths.append(str(entry["path"]))
    missing = [p for p in paths if not (Path(run_folder) / p).exists()]
    recipe = [line.strip("# ").strip() for line in text.splitlines() if "dpmesh synth" in line]
    return missing, recipe


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
        self.start_btn.clicked.connect(lambda _checked=False: self.start())  # clicked(bool) is not a program
        self.stop_btn.clicked.connect(self.stop)
        example = QPushButton("Example")
        example.setToolTip("Use the bundled tiny synthetic config (it needs data made with `dpmesh synth`)")
        example.clicked.connect(lambda _c=False: self.use_example())
        self.run_edit = QLineEdit(str(default_run_folder()))
        self.run_edit.setToolTip("Run folder: the training process works here; relative data and output paths "
                                 "of the config are read from it")
        run_browse = QPushButton("…")
        run_browse.setMaximumWidth(30)
        run_browse.clicked.connect(self._browse_run)
        self.state = QLabel("idle")
        self.state.setWordWrap(True)  # a long error wraps instead of widening the dock
        self.state.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.state.setTextInteractionFlags(self.state.textInteractionFlags()
                                           | self.state.textInteractionFlags().TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(self.config_edit, 1)
        row.addWidget(browse)
        row.addWidget(example)
        row.addWidget(self.start_btn)
        row.addWidget(self.stop_btn)
        row2 = QHBoxLayout()
        row2.addWidget(QLabel("Run in:"))
        row2.addWidget(self.run_edit, 1)
        row2.addWidget(run_browse)
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
        lay.addLayout(row2)
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

    def _browse_run(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Run folder", self.run_edit.text())
        if d:
            self.run_edit.setText(d)

    def use_example(self) -> None:
        self.config_edit.setText(str(BUNDLED_CONFIG))
        self.check()

    def check(self) -> bool:
        """Say what is missing before a run (config, data); True when it can start."""
        cfg = self.config_edit.text().strip()
        if not cfg:
            self.state.setText("Choose a training config (.yaml) first with “…”, or press Example for the bundled "
                               "tiny synthetic one.")
            return False
        if not Path(cfg).is_file():
            self.state.setText(f"The config {cfg} does not exist (or is a folder): choose a .yaml file.")
            return False
        run = Path(self.run_edit.text().strip() or default_run_folder())
        try:
            missing, recipe = missing_data(cfg, run)
        except OSError as e:
            self.state.setText(f"Cannot read the config {cfg}: {e.strerror or e}")
            return False
        if missing:
            how = ("Make it first, in that folder:\n" + "\n".join(recipe)) if recipe else \
                "Make or copy the data there first, or choose another run folder."
            self.state.setText(f"The training data {', '.join(missing)} does not exist in the run folder {run} "
                               f"(relative paths of the config are read from there). {how}")
            return False
        self.state.setText(f"ready: runs in {run}")
        return True

    def start(self, program: tuple[str, list[str]] | None = None) -> None:
        if not isinstance(program, tuple):
            program = None
        cfg = self.config_edit.text().strip()
        if program is None and not self.check():
            return
        run = Path(self.run_edit.text().strip() or default_run_folder())
        if program is None:
            try:
                run.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                self.state.setText(f"Cannot use the run folder {run}: {e.strerror or e}")
                return
        self.reset()
        self.log.clear()
        self.proc.start(str(Path(cfg).resolve()) if cfg else cfg, program=program, cwd=str(run) if run.is_dir() else None)
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
