"""loss.png: the raw loss per step and its moving average, drawn headless (matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

SMOOTHING = 0.9  # exponential moving average weight, as TensorBoard's smoothing slider


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average, so the first points are not pulled towards zero."""
    result, average = [], 0.0
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        result.append(average / (1 - weight**count))
    return result


def plot_loss(steps: list[int], losses: list[float], dest: Path, title: str) -> None:
    """Write a PNG to `dest`: every step's loss faintly, the smoothed curve on top, log scale when it spans
    more than a decade."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    axes.plot(steps, smoothed(losses), color="tab:blue", linewidth=2, label="smoothed")
    positive = [loss for loss in losses if loss > 0]
    if positive and max(positive) / min(positive) > 10:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (MSE)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(dest, format="png")
