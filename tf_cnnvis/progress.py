"""A small progress bar for long work, shown only where a person is watching.

It writes to standard error and only when that stream is a terminal, so logs,
pipes and CI output stay clean; nothing else in the library prints. It has
no dependencies, so the library does not need tqdm.

``progress_bar(progress, total, description)`` turns the ``progress=``
option of the entry functions (``False``/``None``: off, ``True``: a bar on
standard error when it is a terminal, or a callable taking the number of
finished items) into an object with ``update(count)`` and ``close()``.
"""

from __future__ import annotations

import sys
import time

from tf_cnnvis.errors import OptionError
from tf_cnnvis.options import check_integer

_BAR_WIDTH = 28
# Redrawing more often than this only costs time: the eye cannot follow it.
_MIN_REDRAW_SECONDS = 0.1


class ProgressBar:
    """``description [#####.....] done/total elapsed`` redrawn in place.

    Args:
        total: how many items the work has (``None`` or 0: unknown, the bar
            then shows a count only).
        description: a few words in front of the bar.
        stream: where to draw (default ``sys.stderr``, looked up at
            creation so tests and redirections take effect).
        enabled: ``None`` draws only when ``stream`` is a terminal;
            ``True``/``False`` force it on or off.
    """

    def __init__(self, total: int | None, description: str = "", stream=None,
                 enabled: bool | None = None):
        if total is not None:
            check_integer("progress total", total, 0)
        self.total = total or None
        self.description = description
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _is_terminal(self.stream) if enabled is None else bool(enabled)
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = float("-inf")
        self._closed = False

    def update(self, count: int = 1):
        """Record ``count`` more finished items and redraw if it is time to."""
        self.done += count
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if finished or now - self._last_draw >= _MIN_REDRAW_SECONDS:
            self._draw(now)

    def close(self):
        """Draw the final state and end the line, so later output starts clean."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def render(self, now: float | None = None) -> str:
        """The bar's text as it would be drawn now (without the carriage return)."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        head = f"{self.description} " if self.description else ""
        if self.total is None:
            return f"{head}{self.done} done {_duration(elapsed)}"
        fraction = min(self.done / self.total, 1.0)
        filled = int(round(fraction * _BAR_WIDTH))
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        remaining = ""
        if 0 < self.done < self.total:
            remaining = f" ~{_duration(elapsed * (self.total - self.done) / self.done)} left"
        return f"{head}[{bar}] {self.done}/{self.total} {_duration(elapsed)}{remaining}"

    def _draw(self, now: float):
        text = self.render(now)
        self.stream.write("\r" + text + "\x1b[K")  # \x1b[K clears what a longer line left
        self.stream.flush()
        self._last_draw = now

    def __call__(self, count: int = 1):
        self.update(count)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


class _CallbackProgress:
    """Adapts a user's ``callable(count)`` to the bar interface."""

    def __init__(self, callback):
        self.callback = callback

    def update(self, count: int = 1):
        self.callback(count)

    __call__ = update

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


class _NoProgress(_CallbackProgress):
    def __init__(self):
        super().__init__(lambda count: None)


def progress_bar(progress, total: int | None, description: str = ""):
    """The reporter for an entry function's ``progress=`` option.

    ``False``/``None``: nothing. ``True``: a :class:`ProgressBar` on standard
    error when it is a terminal. A :class:`ProgressBar` is used as is; any
    other callable receives the number of items finished at each step.
    """
    if progress is None or progress is False:
        return _NoProgress()
    if progress is True:
        return ProgressBar(total, description)
    if isinstance(progress, ProgressBar):
        if progress.total is None and total:
            progress.total = total
        return progress
    if callable(progress):
        return _CallbackProgress(progress)
    raise OptionError(f"progress={progress!r} is not accepted; give True, False, or a callable "
                      "that takes the number of items finished")


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}:{seconds:02d}" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
