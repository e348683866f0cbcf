"""The Train widget's live plot of the loss and the validation score, epoch by epoch."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


class LossPlot(QWidget):
    """A small live plot: training loss (orange, own scale) and validation score (cyan, 0-1) per epoch."""

    def __init__(self):
        super().__init__()
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.losses: list[float] = []
        self.scores: list[float] = []

    def clear(self) -> None:
        self.losses, self.scores = [], []
        self.update()

    def add(self, loss: float, score: float) -> None:
        self.losses.append(loss)
        self.scores.append(score)
        self.update()

    def _points(self, values: list[float], lo: float, hi: float, w: float, h: float, m: float) -> list[QPointF]:
        n = max(len(values) - 1, 1)
        span = (hi - lo) or 1.0
        return [
            QPointF(m + (w - 2 * m) * i / n, h - m - (h - 2 * m) * (v - lo) / span)
            for i, v in enumerate(values)
            if math.isfinite(v)
        ]

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        w, h, m = float(self.width()), float(self.height()), 8.0
        painter.setPen(QPen(QColor(120, 120, 120)))
        painter.drawRect(int(m), int(m), int(w - 2 * m), int(h - 2 * m))
        finite = [v for v in self.losses if math.isfinite(v)]
        for values, lo, hi, colour in (
            (self.losses, min(finite, default=0.0), max(finite, default=1.0), QColor(255, 150, 40)),
            (self.scores, 0.0, 1.0, QColor(60, 200, 230)),
        ):
            points = self._points(values, lo, hi, w, h, m)
            painter.setPen(QPen(colour, 2))
            for a, b in zip(points, points[1:], strict=False):
                painter.drawLine(a, b)
            for p in points:
                painter.drawEllipse(p, 2.5, 2.5)
        painter.setPen(QPen(QColor(200, 200, 200)))
        painter.drawText(int(m + 4), int(m + 14), "loss (orange)  val score (cyan)")
        painter.end()
