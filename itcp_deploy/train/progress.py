"""Progress bars for training epochs (rich, on stderr; a no-op when quiet or not rank 0)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EpochProgress:
    """One bar per epoch showing steps done and the running loss."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(),
                console=Console(stderr=True), transient=False,
            )
        self._task = None

    def __enter__(self) -> EpochProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_epoch(self, description: str, total_steps: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=total_steps, loss=float("nan"))

    def step(self, loss: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, loss=loss)

    def note(self, text: str) -> None:
        """A line under the bars (end-of-epoch accuracy)."""
        if self._progress is not None:
            self._progress.console.print(text)
