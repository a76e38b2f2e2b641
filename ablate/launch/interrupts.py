"""Ctrl-C and SIGTERM during a launch: stop cleanly, say so, and exit 130 / 143.

Ray Tune stops a run gracefully on SIGINT (it saves the experiment state one last time, so
``ablate resume`` can pick it up), but it then returns as if the run had ended, ignores
SIGTERM, and prints a ``Tuner.restore(...)`` hint instead of ours. :class:`StopSignals`
takes both signals for the whole launch:

- before and after ``Tuner.fit`` (building data, creating runs, writing reports) a signal
  raises :class:`Interrupted` at once;
- during ``Tuner.fit`` (inside :meth:`StopSignals.graceful`) the first signal asks Ray Tune to
  stop the same way its own Ctrl-C handler does (it calls the handler Ray Tune installs for
  SIGUSR1, its public "stop the run" signal), and is remembered, so the driver can mark the
  parent and the running children KILLED and exit with ``128 + signal``; a second signal
  stops at once.

Only the public ``TUNE_DISABLE_SIGINT_HANDLER`` switch and Ray Tune's SIGUSR1 handler are used.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The launch was stopped by a signal; ``exit_code`` is ``128 + signum``."""

    def __init__(self, signum: int, hint: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.hint = hint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class _DropRayRestoreHint(logging.Filter):
    """Ray Tune's own end-of-run notes on a stopped run (``Tuner.restore(...)``, its stop
    notice, trials without results yet): ablate prints ``ablate resume NAME`` instead."""

    NOISE = (
        "Tuner.restore(",
        "Stop signal received",
        "Trials did not complete",
        "Failed to fetch metrics",
    )
    LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


class StopSignals:
    """SIGINT/SIGTERM handlers for one launch (a no-op outside the main thread)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._graceful = False
        self._saved: dict[int, Any] = {}
        self._saved_env: str | None = None
        self._filter = _DropRayRestoreHint()
        self._active = False

    def __enter__(self) -> StopSignals:
        self._active = threading.current_thread() is threading.main_thread()
        if self._active:
            for signum in STOP_SIGNALS:
                self._saved[signum] = signal.signal(signum, self._handle)
            self._saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours stays installed in fit
            for name in self._filter.LOGGERS:
                logging.getLogger(name).addFilter(self._filter)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._active:
            return
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        if self._saved_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._saved_env
        for name in self._filter.LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)

    def reinstall(self) -> None:
        """Take SIGINT/SIGTERM back: ``ray.init`` installs handlers of its own (SIGTERM: exit
        at once, then its C++ core's crash handler, which aborts the process)."""
        if self._active:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)

    @property
    def interrupted(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if first and self._graceful:
            ray_stop = signal.getsignal(signal.SIGUSR1)  # installed by Tuner.fit
            if callable(ray_stop):
                sys.stderr.write(
                    f"\n{signal.Signals(signum).name}: stopping the trials and saving the "
                    "launch's state (Ctrl-C again to stop at once)\n"
                )
                ray_stop(signal.SIGUSR1, frame)
                return
        raise Interrupted(self.signum or signum)

    @contextmanager
    def graceful(self) -> Iterator[None]:
        """Around ``Tuner.fit``: a first signal stops the run the way Ray Tune's Ctrl-C does."""
        if self.signum is not None:  # a signal came before fit started
            raise Interrupted(self.signum)
        previous = signal.getsignal(signal.SIGUSR1) if self._active else None
        if self._active:  # forget a handler a previous fit left: it would stop nothing
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.reinstall()
        self._graceful = True
        try:
            yield
        finally:
            self._graceful = False
            if self._active and previous is not None:
                signal.signal(signal.SIGUSR1, previous)


_ACTIVE: list[StopSignals] = []


def stoppable(launch: F) -> F:
    """Run ``launch`` under :class:`StopSignals` (the innermost launch's, when nested: a
    search's confirm grid runs under its search's)."""

    @functools.wraps(launch)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _ACTIVE:
            return launch(*args, **kwargs)
        with StopSignals() as stop:
            _ACTIVE.append(stop)
            try:
                return launch(*args, **kwargs)
            finally:
                _ACTIVE.remove(stop)

    return wrapper  # type: ignore[return-value]


def active_stop_signals() -> StopSignals:
    """The :class:`StopSignals` of the launch running now (an inactive one outside any)."""
    return _ACTIVE[-1] if _ACTIVE else StopSignals()


def reinstall() -> None:
    """After ``ray.init``: the running launch's handlers take SIGINT/SIGTERM back."""
    if _ACTIVE:
        _ACTIVE[-1].reinstall()
