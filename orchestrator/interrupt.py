"""SIGTERM handled as Ctrl-C while a study runs."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM to the driver (a scheduler's time limit or preemption, `kill`, `docker stop`) stops the study
    as Ctrl-C does: Tune stops the trials, their runs are marked interrupted, the same command resumes them.
    Without this, the handler Ray installs aborts the driver and leaves every run marked running."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:  # Ray's handler was installed from C: Python cannot put it back, the default is the next best
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
