"""The one exception the analysis raises on purpose."""

from __future__ import annotations


class AnalysisError(ValueError):
    """A study that cannot be analysed as asked.

    The message is meant for the terminal as it is: it says what is wrong with the
    study (unknown, too few trials, all diverged, metric missing or mixed) and what to
    do about it, so the CLI prints it instead of a traceback.
    """
