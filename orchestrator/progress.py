"""Live progress of a study: a table of trials with status, step, latest metric and diversity, loss_d and ETA."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

from ray import tune

REFRESH_SECONDS = 15.0


class ProgressTable(tune.Callback):
    """Prints a compact trial table every REFRESH_SECONDS and whenever a trial ends."""

    def __init__(self, names: dict[str, str], metric: str, diversity: str | None,
                 refresh: float = REFRESH_SECONDS, stream: TextIO | None = None) -> None:
        self.names, self.refresh = names, refresh
        self.metric, self.diversity = metric, diversity
        self._stream = stream  # None: sys.stderr at print time (Tune pickles its callbacks; streams do not pickle)
        self.printed_lines = 0
        self.latest: dict[str, dict[str, Any]] = {}
        self.first_seen: dict[str, tuple[float, int]] = {}
        self.last_print = 0.0

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = trial.config["trial_id"]
        row = self.latest.setdefault(tid, {})
        row.update({k: v for k, v in result.items() if isinstance(v, (int, float))})
        self.first_seen.setdefault(tid, (time.monotonic(), int(result.get("step", 0))))
        if time.monotonic() - self.last_print >= self.refresh:
            self.print_table(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.print_table(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.print_table(trials)

    def _eta(self, tid: str, row: dict[str, Any]) -> str:
        if tid not in self.first_seen or "step" not in row:
            return "-"
        start, step0 = self.first_seen[tid]
        done = row["step"] - step0
        left = row.get("total_steps", 0) - row["step"]
        if left <= 0:
            return "0s"
        if done <= 0:
            return "-"
        return f"{(time.monotonic() - start) / done * left:.0f}s"

    def print_table(self, trials: list) -> None:
        self.last_print = time.monotonic()
        lines = [f"{'trial':<40} {'status':<10} {'step':>11} {self.metric[:14]:>14} {'diversity':>9} {'loss_d':>7} {'eta':>7}"]
        order = {tid: i for i, tid in enumerate(self.names)}  # the study's order, not the order trials started
        for trial in sorted(trials, key=lambda t: order.get(t.config["trial_id"], len(order))):
            tid = trial.config["trial_id"]
            row = self.latest.get(tid, {})
            value = row.get(self.metric)
            spread = row.get(self.diversity) if self.diversity else None
            step = f"{row.get('step', 0)}/{row.get('total_steps', '?')}"
            lines.append(f"{self.names.get(tid, tid)[:40]:<40} {trial.status.lower():<10} {step:>11} "
                         f"{'-' if value is None else f'{value:.3f}':>14} {'-' if spread is None else f'{spread:.3f}':>9} "
                         f"{row.get('loss_d', float('nan')):>7.3f} {self._eta(tid, row):>7}")
        # on a terminal the table redraws in place (cursor up over the last table, clear below), its lines cut to
        # the terminal's width (a wrapped line would be two rows, and the cursor would not climb over the whole
        # table); in a log, where nothing can be redrawn, every update is printed in full
        stream = self._stream or sys.stderr
        tty = stream.isatty()
        if tty:
            columns = shutil.get_terminal_size().columns
            lines = [line[:columns - 1] for line in lines]
        redraw = f"\x1b[{self.printed_lines}F\x1b[J" if self.printed_lines and tty else ""
        print(redraw + "\n".join(lines), file=stream, flush=True)
        self.printed_lines = len(lines)
