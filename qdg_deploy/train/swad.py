"""Weight averaging: SWAD's dense averaging inside a loss valley (Cha et al. 2021) and EoA's simple moving average.

SWAD (`LossValley`): the iterates between two evaluations form a *segment*, averaged densely (every iterate,
`RunningAverage`). At each evaluation the segment's average enters two queues with the validation loss (the
training domains' `out` splits) of the network at that moment. The valley *opens* at the oldest segment of the
last `n_converge` once that oldest segment holds the smallest of their losses; the threshold is then
(1 + tolerance_ratio) × their mean loss. From there every segment joins the average as long as the smallest loss
of the next `n_tolerance` segments stays under the threshold; the valley *closes* (for good) when it does not.
Segments have equal length, so the average of segment averages is the dense average of every iterate inside the
window. At the end the segments still queued join while their look-ahead minimum stays under the threshold.

What is averaged: every floating-point parameter — for a quantized network the latent weights AND the quantizers'
step sizes / zero points. Buffers (BatchNorm statistics, quantizer `initialized` flags) are taken from the newest
iterate; BatchNorm statistics are then recomputed for the averaged weights (`recompute_bn`) unless frozen.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from torch import nn


class RunningAverage:
    """The uniform average of the parameters of every network passed to `add` (float64 accumulators, so the
    average of many iterates does not depend on their order beyond float64 round-off)."""

    def __init__(self):
        self.sum: dict[str, torch.Tensor] = {}
        self.count = 0
        self.end_step: int | None = None

    @torch.no_grad()
    def add(self, net: nn.Module, step: int | None = None) -> None:
        """Add one iterate (called every training step: accumulates in place, no new tensor after the first)."""
        for name, p in net.named_parameters():
            if name in self.sum:
                self.sum[name].add_(p)
            else:
                self.sum[name] = p.detach().double()  # a float64 copy
        self.count += 1
        self.end_step = step

    def merge(self, other: "RunningAverage") -> None:
        """Add another average's iterates (weighted by how many it holds)."""
        for name, t in other.sum.items():
            self.sum[name] = self.sum[name] + t if name in self.sum else t.clone()
        self.count += other.count
        self.end_step = other.end_step

    def state(self) -> dict[str, torch.Tensor]:
        """name -> averaged parameter (float64)."""
        if not self.count:
            raise ValueError("empty average")
        return {k: v / self.count for k, v in self.sum.items()}

    @torch.no_grad()
    def load_into(self, net: nn.Module) -> None:
        """Copy the averaged parameters into `net` (buffers untouched)."""
        avg = self.state()
        for name, p in net.named_parameters():
            p.copy_(avg[name].to(p.dtype))


@dataclass
class Segment:
    average: RunningAverage
    loss: float

    @property
    def end_step(self) -> int | None:
        return self.average.end_step


@dataclass
class LossValley:
    """SWAD's window over segments (see the module docstring). Feed `update(segment_average, val_loss)` at every
    evaluation; `final()` returns the average over the window (or, if the valley never opened, the last segment).

    Each segment from the opening one on is decided once, when the `n_tolerance` segments starting at it are
    known: it joins if their smallest loss is under the threshold, else the valley closes. (SWAD's own code can
    add an early segment twice while its queue is not yet full; here every segment counts once.)"""

    n_converge: int = 3
    n_tolerance: int = 6
    tolerance_ratio: float = 0.3
    converge_q: deque = field(default_factory=deque)
    pending: list = field(default_factory=list)  # segments from the opening one on, not yet decided
    window: RunningAverage | None = None
    threshold: float | None = None
    converge_step: int | None = None
    dead: bool = False  # the valley closed
    joined: list = field(default_factory=list)  # end steps of the segments in the average, for the record
    last: Segment | None = None

    def __post_init__(self):
        if self.n_converge < 1 or self.n_tolerance < 1 or self.tolerance_ratio < 0:
            raise ValueError("SWAD needs n_converge >= 1, n_tolerance >= 1 and tolerance_ratio >= 0")
        self.converge_q = deque(maxlen=self.n_converge)

    @property
    def opened(self) -> bool:
        return self.converge_step is not None

    def update(self, average: RunningAverage, loss: float) -> None:
        seg = Segment(average, float(loss))
        self.last = seg
        if self.dead:
            return
        if self.opened:
            self.pending.append(seg)
        else:
            self.converge_q.append(seg)
            self._try_open()
        self._decide(lookahead=self.n_tolerance)

    def _try_open(self) -> None:
        """Open at the oldest of the last n_converge segments when it holds their smallest loss."""
        if len(self.converge_q) < self.n_converge:
            return
        losses = [s.loss for s in self.converge_q]
        if min(range(len(losses)), key=losses.__getitem__) != 0:
            return
        self.converge_step = self.converge_q[0].end_step
        self.threshold = sum(losses) / len(losses) * (1.0 + self.tolerance_ratio)
        self.pending = list(self.converge_q)

    def _decide(self, lookahead: int) -> None:
        while self.opened and not self.dead and self.pending and len(self.pending) >= lookahead:
            if min(s.loss for s in self.pending[: self.n_tolerance]) > self.threshold:
                self.dead = True
                self.pending = []
                return
            seg = self.pending.pop(0)
            if self.window is None:
                self.window = RunningAverage()
            self.window.merge(seg.average)
            self.joined.append(seg.end_step)

    def final(self) -> RunningAverage:
        """The window's average, the segments still undecided judged on the look-ahead that is left. If the valley
        never opened: the last segment (as SWAD does); `record()["opened"]` then says so."""
        self._decide(lookahead=1)
        if self.window is None:
            if self.last is None:
                raise ValueError("SWAD saw no segment: evaluate at least once after averaging starts")
            return self.last.average
        return self.window

    def record(self) -> dict:
        if self.window is None:  # final() falls back to the last segment
            n = self.last.average.count if self.last is not None else 0
            return {
                "opened": self.opened,
                "closed": self.dead,
                "start_step": self.converge_step,
                "threshold": self.threshold,
                "segments_averaged": [self.last.end_step] if n else [],
                "iterates_averaged": n,
                "note": "the valley never opened: the last segment's average is used",
            }
        return {
            "opened": self.opened,
            "closed": self.dead,
            "start_step": self.converge_step,
            "threshold": self.threshold,
            "segments_averaged": list(self.joined),
            "iterates_averaged": self.window.count,
        }


@torch.no_grad()
def recompute_bn(net: nn.Module, batches, steps: int) -> int:
    """Recompute every (trainable-statistics) BatchNorm's running mean/var as the plain average over `steps`
    training batches (`batches` yields input tensors); returns how many BatchNorm layers were reset."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or steps <= 0:
        return 0
    was = net.training
    momenta = {}
    for m in bns:
        momenta[m] = m.momentum
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    net.train()
    for _ in range(steps):
        net(next(batches))
    for m in bns:
        m.momentum = momenta[m]
    net.train(was)
    return len(bns)


class WeightAveraging:
    """Runs SWAD (`swad`) or EoA's simple moving average (`sma`: from step START every iterate) beside the loop.

    `observe(net, done)` after every update (`done` updates made), `checkpoint(val_loss)` at every evaluation,
    `average()` at the end. Averaging takes iterates after `start` updates only (a quantizing method passes its
    quantization step, so only quantized iterates are averaged)."""

    def __init__(self, hp: dict, start: int):
        self.kind = "swad" if hp.get("swad") else "sma" if hp.get("sma") is not None else None
        self.start = start if self.kind != "sma" else max(start, int(hp["sma"]))
        self.segment = RunningAverage()
        self.sma = RunningAverage()
        self.valley = (
            LossValley(hp.get("swad_n_converge", 3), hp.get("swad_n_tolerance", 6), hp.get("swad_tolerance_ratio", 0.3))
            if self.kind == "swad"
            else None
        )

    def observe(self, net: nn.Module, done: int) -> None:
        if self.kind is None or done <= self.start:
            return
        (self.segment if self.kind == "swad" else self.sma).add(net, done)

    def checkpoint(self, val_loss: float) -> None:
        if self.kind == "swad" and self.segment.count:
            self.valley.update(self.segment, val_loss)
            self.segment = RunningAverage()

    def average(self) -> RunningAverage | None:
        """The averaged parameters, or None when nothing was averaged (no averaging asked, or too few steps)."""
        if self.kind == "sma":
            return self.sma if self.sma.count else None
        if self.kind == "swad":
            # iterates after the last evaluation form no judged segment: SWAD leaves them out too
            return self.valley.final() if self.valley.last is not None else None
        return None

    def record(self) -> dict:
        if self.kind == "swad":
            return {
                "kind": "swad",
                "start_after_step": self.start,
                "n_converge": self.valley.n_converge,
                "n_tolerance": self.valley.n_tolerance,
                "tolerance_ratio": self.valley.tolerance_ratio,
                **self.valley.record(),
            }
        return {"kind": self.kind, "start_after_step": self.start, "iterates_averaged": self.sma.count}
