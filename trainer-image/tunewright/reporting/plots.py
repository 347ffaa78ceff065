"""The report's plots, drawn with matplotlib and returned as `data:image/png;base64,...` URIs, so the page
needs neither extra files nor the network.

Figures are made with `matplotlib.figure.Figure` (no pyplot): no global figure state, no GUI backend, safe
beside a training process's other threads.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

Series = Sequence[tuple[float, float]]  # (step, value)

WIDTH, HEIGHT, DPI = 7.0, 3.2, 100


def png_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def curves(title: str, series: Mapping[str, Series], ylabel: str, checkpoints: Sequence[int] = (),
           best_step: int | None = None, log_y: bool = False) -> str:
    """Lines over optimizer steps; checkpoints as dotted verticals, the best one as a solid green line."""
    fig = Figure(figsize=(WIDTH, HEIGHT))
    ax = fig.add_subplot()
    for step in checkpoints:
        ax.axvline(step, color="0.75", linestyle=":", linewidth=1)
    if best_step is not None:
        ax.axvline(best_step, color="tab:green", linewidth=1.5, label=f"best checkpoint (step {best_step})")
    for label, points in series.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    if log_y and all(v > 0 for points in series.values() for _, v in points):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if checkpoints:
        ax.plot([], [], color="0.75", linestyle=":", label="checkpoint")
    ax.legend(fontsize="small")
    return png_data_uri(fig)


def spectrogram(samples: np.ndarray, rate: int, title: str) -> str:
    fig = Figure(figsize=(WIDTH / 2, HEIGHT * 0.8))
    ax = fig.add_subplot()
    nfft = 512 if rate >= 16000 else 256
    if len(samples) >= nfft:
        # A tiny floor keeps silence finite on the dB scale.
        ax.specgram(samples + 1e-9, NFFT=nfft, Fs=rate, noverlap=nfft // 2, cmap="magma")
    ax.set_title(title)
    ax.set_xlabel("s")
    ax.set_ylabel("Hz")
    return png_data_uri(fig)
