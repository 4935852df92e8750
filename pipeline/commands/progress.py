"""Progress on stderr: a tqdm bar on a terminal (a notebook's own bar in Jupyter), plain periodic
lines in logs, nothing with --quiet. The ETA comes from the calibrated lengths and throughput
when the calibration file has them (learn.eta_model), else from the rate so far."""

from __future__ import annotations

import sys
import time

from pipeline.commands.forecast import eta_text


class Progress:
    def __init__(self, total: int | None, *, quiet: bool, initial: int = 0, interval: float = 30.0, stream=None,
                 eta=None, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.total, self.quiet, self.interval = total, quiet, interval
        self.eta, self.clock = eta, clock  # eta: a forecast.EtaModel, or None
        self.done, self.tokens = initial, 0
        self.start = self.last = clock()
        self.bar = None
        if not quiet and (self.stream.isatty() or _in_jupyter()):
            from tqdm.auto import tqdm  # the notebook's widget in Jupyter, else the terminal's bar

            self.bar = tqdm(total=total, unit="req", file=self.stream, dynamic_ncols=True,
                            smoothing=0.1, desc="requests", initial=initial)

    def update(self, requests: int, generated_tokens: int = 0) -> None:
        self.done += requests
        self.tokens += generated_tokens
        now = self.clock()
        if self.bar is not None:
            self.bar.update(requests)
            left = f", ETA {eta_text(self.eta.seconds_left(self.total - self.done))}" if self.eta and self.total else ""
            self.bar.set_postfix_str(f"{self._tok_rate(now):.1f} tok/s{left}", refresh=False)
        elif not self.quiet and now - self.last >= self.interval:
            self.last = now
            self.line(self._status(now))

    def _tok_rate(self, now: float) -> float:
        return self.tokens / max(now - self.start, 1e-9)

    def _status(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.done / max(elapsed, 1e-9)
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and self.eta is not None:
            eta = f", ETA {eta_text(self.eta.seconds_left(self.total - self.done))} ({self.eta.source})"
        elif self.total and rate > 0:
            eta = f", ETA {int((self.total - self.done) / rate)} s"
        return (f"progress: {self.done}{of} requests, {rate:.2f} req/s, "
                f"{self._tok_rate(now):.1f} generated tok/s, {elapsed:.0f} s elapsed{eta}")

    def line(self, text: str) -> None:
        """A log line that does not break the bar."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet and self.done:
            self.line(self._status(self.clock()))


def _in_jupyter() -> bool:
    """Inside a Jupyter kernel (IPython's ZMQ shell), where stderr is no terminal but a bar shows."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"
