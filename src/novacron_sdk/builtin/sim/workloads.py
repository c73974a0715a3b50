"""Workload models that dirty a simulated VM's memory in the background, like a busy guest.

A :class:`Workload` is deterministic: ``step(seconds)`` writes exactly the pages that
``seconds`` of guest time produce at the current throttle, so tests can drive it by hand. The
background thread just calls ``step`` with the wall-clock time of each small slice.

Trace files (pattern ``trace``) are text, one page write per line: ``t_seconds page_index``
(seconds since the start of the trace, non-decreasing; ``#`` starts a comment). Record one with
:meth:`GuestMemory.start_recording` or :func:`generate_trace`.
"""

from __future__ import annotations

import bisect
import random
import struct
import threading
import time
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from novacron_sdk.builtin.sim.memory import (
    TRACE_HEADER,
    GuestMemory,
    structured_page,
    text_page,
)
from novacron_sdk.errors import DriverError

SLICE_SECONDS = 0.01
_MAX_STEP_SECONDS = 0.1
_STAMP = struct.Struct("<QQ")
MAX_THROTTLE = 0.99


class WorkloadSpec(BaseModel):
    """How a simulated guest dirties its memory (``VMSpec.extra["workload"]`` for ``sim``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: Literal["idle", "hot-set", "uniform", "sequential", "trace"] = "idle"
    rate_mbps: float = Field(
        default=40.0, ge=0, le=100_000, description="Page writes in MB/s (10^6 bytes)."
    )
    hot_fraction: float = Field(
        default=0.1, gt=0, le=1, description="hot-set: share of memory that takes the writes."
    )
    entropy: float = Field(
        default=0.3, ge=0, le=1, description="Share of random bytes in each written page."
    )
    seed: int = Field(default=0, ge=0)
    trace_path: str | None = Field(default=None, description="trace: the trace file to replay.")
    loop: bool = Field(default=True, description="trace: start over at the end of the trace.")

    @model_validator(mode="after")
    def _trace_needs_path(self) -> Self:
        if self.pattern == "trace" and not self.trace_path:
            msg = "pattern 'trace' needs trace_path (a file of 't_seconds page_index' lines)"
            raise ValueError(msg)
        return self


def load_trace(path: str | Path, page_count: int) -> tuple[list[float], list[int]]:
    """Parse a trace file into (times, page indices); errors name the file and the line."""
    times: list[float] = []
    pages: list[int] = []
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read dirty-page trace {str(path)!r}: {exc}"
        raise DriverError(msg) from exc
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            stamp_text, index_text = line.split()
            stamp, index = float(stamp_text), int(index_text)
        except ValueError as exc:
            msg = f"{path}:{number}: expected 't_seconds page_index', got {raw!r}"
            raise DriverError(msg) from exc
        if not 0 <= index < page_count:
            msg = f"{path}:{number}: page {index} is outside this VM's {page_count} pages"
            raise DriverError(msg)
        if times and stamp < times[-1]:
            msg = f"{path}:{number}: time {stamp} goes backwards (previous {times[-1]})"
            raise DriverError(msg)
        times.append(stamp)
        pages.append(index)
    return times, pages


class Workload:
    """Writes pages of ``memory`` following ``spec``; run it with :meth:`start` or :meth:`step`."""

    def __init__(
        self, memory: GuestMemory, spec: WorkloadSpec, state: dict[str, Any] | None = None
    ) -> None:
        self.memory = memory
        self.spec = spec
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._paused = False
        self._throttle = 0.0
        self._rng = random.Random(spec.seed)
        self._counter = 0
        self._position = 0
        self._credit = 0.0
        self._clock = 0.0
        self.pages_written = 0
        self.last_indices: list[int] = []
        self._template = (text_page if spec.seed % 2 else structured_page)(
            random.Random(spec.seed), memory.page_size
        )
        count = memory.page_count
        self._hot_count = max(1, int(count * spec.hot_fraction))
        self._hot_start = random.Random(spec.seed ^ 0x5EED).randrange(count)
        self._trace: tuple[list[float], list[int]] = ([], [])
        if spec.pattern == "trace" and spec.trace_path:
            self._trace = load_trace(spec.trace_path, count)
        if state is not None:
            self._import_state(state)

    # -- state export / import (migration carries it in the device state) ----------------
    def state(self) -> dict[str, Any]:
        """The workload's progress as JSON-ready data, taken under the lock."""
        with self._cond:
            version, internal, gauss = self._rng.getstate()
            return {
                "counter": self._counter,
                "position": self._position,
                "credit": self._credit,
                "clock": self._clock,
                "pages_written": self.pages_written,
                "rng": [version, list(internal), gauss],
            }

    @classmethod
    def from_state(cls, memory: GuestMemory, spec: WorkloadSpec, state: dict[str, Any]) -> Self:
        """A workload that continues exactly where the exported ``state`` left off."""
        return cls(memory, spec, state)

    def _import_state(self, state: dict[str, Any]) -> None:
        try:
            version, internal, gauss = state["rng"]
            self._rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
            self._counter = int(state["counter"])
            self._position = int(state["position"])
            self._credit = float(state["credit"])
            self._clock = float(state["clock"])
            self.pages_written = int(state["pages_written"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"invalid workload state ({exc!r}): it must come from Workload.state()"
            raise DriverError(msg) from exc

    # -- controls --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def paused(self) -> bool:
        """Whether writes are suspended."""
        return self._paused

    @property
    def throttle_fraction(self) -> float:
        """The current throttle (0 = full speed)."""
        return self._throttle

    def throttle(self, fraction: float) -> None:
        """Run at ``1 - fraction`` of the configured speed (0 = full, 0.99 = 1%)."""
        if not 0.0 <= fraction <= MAX_THROTTLE:
            msg = f"throttle {fraction} is out of range: use 0.0 (none) to {MAX_THROTTLE}"
            raise DriverError(msg)
        with self._cond:
            self._throttle = fraction

    def pause(self) -> None:
        """Suspend writes. When this returns, no write is in progress and none will start."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Continue writing after :meth:`pause`."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def start(self) -> None:
        """Run in a daemon thread (no-op if already running)."""
        if self.running:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sim-workload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it; the workload can be started again later."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        last = time.monotonic()
        with self._cond:
            while not self._stopping:
                if self._paused:
                    self._cond.wait()
                    last = time.monotonic()
                    continue
                now = time.monotonic()
                # A late slice (GIL contention) catches up, but never by more than a burst cap.
                self._step_locked(min(now - last, _MAX_STEP_SECONDS))
                last = now
                self._cond.wait(timeout=SLICE_SECONDS)

    # -- the deterministic core ------------------------------------------------------------
    def step(self, seconds: float) -> int:
        """Write the pages due in ``seconds`` of guest time; returns how many (0 if paused)."""
        with self._cond:
            if self._paused:
                return 0
            return self._step_locked(seconds)

    def _step_locked(self, seconds: float) -> int:
        guest_seconds = max(seconds, 0.0) * (1.0 - self._throttle)
        if self.spec.pattern == "idle" or guest_seconds == 0.0:
            self.last_indices = []
            return 0
        if self.spec.pattern == "trace":
            indices = self._trace_indices(guest_seconds)
        else:
            rate = self.spec.rate_mbps * 1e6 / self.memory.page_size
            self._credit += rate * guest_seconds
            due = int(self._credit)
            self._credit -= due
            indices = [self._next_index() for _ in range(due)]
        self.last_indices = indices
        if not indices:
            return 0
        self.memory.write_pages(indices, b"".join(self._page_bytes(i) for i in indices))
        self.pages_written += len(indices)
        return len(indices)

    def _next_index(self) -> int:
        count = self.memory.page_count
        pattern = self.spec.pattern
        if pattern == "sequential":
            index = self._position
            self._position = (self._position + 1) % count
            return index
        if pattern == "hot-set":
            return (self._hot_start + self._rng.randrange(self._hot_count)) % count
        return self._rng.randrange(count)

    def _trace_indices(self, guest_seconds: float) -> list[int]:
        times, pages = self._trace
        if not times:
            return []
        # One pass lasts until one slice after the last write, so that write is replayed too.
        duration = times[-1] + SLICE_SECONDS
        clock, end_clock = self._clock, self._clock + guest_seconds
        self._clock = end_clock
        out: list[int] = []
        while clock < end_clock:
            # The lap's bounds are computed as (lap + 1) * duration, the same expression as
            # the next lap's start: with lap_start + duration instead, rounding could make the
            # stop equal the clock (6 * 0.04 + 0.04 < 7 * 0.04) and the loop never advance.
            lap = int(clock // duration)
            while (lap + 1) * duration <= clock:
                lap += 1
            while lap > 0 and lap * duration > clock:
                lap -= 1
            if lap >= 1 and not self.spec.loop:
                break
            lap_start = lap * duration
            stop = min(end_clock, (lap + 1) * duration)
            low = bisect.bisect_left(times, clock - lap_start)
            high = bisect.bisect_left(times, stop - lap_start)
            out.extend(pages[low:high])
            clock = stop
        return out

    def _page_bytes(self, index: int) -> bytes:
        self._counter += 1
        size = self.memory.page_size
        random_length = int(self.spec.entropy * (size - _STAMP.size))
        head = _STAMP.pack(self._counter, index) + self._rng.randbytes(random_length)
        return head + self._template[len(head) :]


def generate_trace(path: str | Path, spec: WorkloadSpec, *, memory_mib: int, seconds: float) -> int:
    """Write a trace of ``seconds`` of ``spec`` on a VM of ``memory_mib``; returns the writes.

    The workload is stepped in guest time (no waiting), so a long trace is quick to make.
    """
    if spec.pattern == "trace":
        msg = "generate_trace needs a synthetic pattern (idle, hot-set, uniform, sequential)"
        raise DriverError(msg)
    memory = GuestMemory(memory_mib * 1024 * 1024)
    workload = Workload(memory, spec)
    lines = [TRACE_HEADER + "\n"]
    try:
        for slice_number in range(round(seconds / SLICE_SECONDS)):
            workload.step(SLICE_SECONDS)
            stamp = f"{slice_number * SLICE_SECONDS:.6f}"
            lines.extend(f"{stamp} {index}\n" for index in workload.last_indices)
    finally:
        memory.close()
    Path(path).write_text("".join(lines), encoding="ascii")
    return len(lines) - 1
