"""Parity of a detector's engine with PyTorch: the same detections, in whatever order ties fall.

A detector's outputs are ``(boxes, scores, labels)`` per image, sorted by score after NMS. Two runtimes whose
scores differ in the 7th digit (float32 summation order) may swap two detections of near-equal score, or
keep a different one of two tied at the cut-off (``detections_per_img``); an element-wise comparison calls that
a mismatch. Detections are matched instead: each PyTorch detection to an engine detection of the same label
whose score and box agree within the tolerance. A detection may go unmatched only where its score ties the
lowest score kept (the cut-off), which is where the two runtimes may legitimately disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DETECTION_FIELDS = 3  # boxes, scores, labels per image


def _match(want: Sequence[np.ndarray], got: Sequence[np.ndarray], rtol: float) -> tuple[float, int]:
    """(worst relative box error over matched detections, number unmatched away from the cut-off)."""
    (wb, ws, wl), (gb, gs, gl) = want, got
    scale = max(float(np.abs(wb).max(initial=0.0)), 1.0)
    score_tol = rtol * max(float(np.abs(ws).max(initial=0.0)), 1e-12)
    free = np.ones(len(gs), dtype=bool)
    worst, unmatched = 0.0, 0
    for i in range(len(ws)):
        err = np.abs(gb - wb[i]).max(axis=1, initial=0.0) / scale if len(gs) else np.zeros(0)
        ok = free & (gl == wl[i]) & (np.abs(gs - ws[i]) <= score_tol) & (err <= rtol)
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(err[ok])])
            free[j] = False
            worst = max(worst, float(err[j]))
        elif ws[i] > _cut_off(ws, gs) + score_tol:
            unmatched += 1
    unmatched += int(np.sum(gs[free] > _cut_off(ws, gs) + score_tol))
    return worst, unmatched


def _cut_off(ws: np.ndarray, gs: np.ndarray) -> float:
    """The lowest score either runtime kept (detections at it may differ between them)."""
    return float(min(ws.min(initial=np.inf), gs.min(initial=np.inf)))


def detections_error(want: Sequence[np.ndarray], got: Sequence[np.ndarray], rtol: float) -> float:
    """Max relative box error over matched detections of every image; ``inf`` when a detection above the
    score cut-off has no match (a different box, score or label: a wrong engine)."""
    if len(want) != len(got) or len(want) % DETECTION_FIELDS:
        return float("inf")
    worst = 0.0
    for k in range(0, len(want), DETECTION_FIELDS):
        error, unmatched = _match(want[k:k + DETECTION_FIELDS], got[k:k + DETECTION_FIELDS], rtol)
        if unmatched:
            return float("inf")
        worst = max(worst, error)
    return worst
