"""The source side of a live migration: pre-copy rounds, switch-over, verification, hand-over.

The engine is built only on the contracts: a :class:`MigrationSource` (pages and dirty
tracking), a transport :class:`Channel` to the destination's receiver, a page codec and a
bandwidth predictor chosen by the planner. Any failure before the hand-over (VERIFY, on
which the destination resumes the VM if everything matches) rolls back: the source VM keeps
running, untouched. After it, the source rolls back only when the destination says it does
not run the VM; when nobody can tell, the source stays paused rather than run the VM twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from novacron_sdk.encoding.interface import PageBatch, PageEncoder
from novacron_sdk.errors import (
    MigrationAbortedError,
    MigrationError,
    NovaCronError,
    VerificationError,
)
from novacron_sdk.hypervisors.interface import MigrationSource
from novacron_sdk.migration import protocol
from novacron_sdk.migration.digests import DigestTable, page_digests
from novacron_sdk.migration.models import (
    MigrationEvent,
    MigrationEventKind,
    MigrationPhase,
    MigrationReport,
    MigrationSettings,
    RoundReport,
    SwitchoverReport,
)
from novacron_sdk.migration.pacing import LinkMeter, TokenBucket
from novacron_sdk.migration.planner import MigrationPlan, should_switch_over
from novacron_sdk.migration.protocol import Msg
from novacron_sdk.plugin.manager import NovaCronPluginManager
from novacron_sdk.prediction.interface import BandwidthSample
from novacron_sdk.transport.interface import Channel

log = logging.getLogger(__name__)

EventCallback = Callable[[MigrationEvent], None]
DestinationCheck = Callable[[], Awaitable[bool | None]]
"""After a lost ACTIVATED: True if the destination runs the VM, False if not, None unknown."""

MIN_SAMPLE_BYTES = 256 * 1024
PIPELINE_DEPTH = 4
PROGRESS_INTERVAL_S = 0.25
RTT_PINGS = 2
"""PING/PONG exchanges at the handshake; the shortest is the round trip (an idle link)."""
MIN_SPLIT_BATCH_PAGES = 16
"""A short send is split over the streams only down to batches of this many pages."""
DESTINATION_CHECK_S = 10.0
"""After a lost answer, how long to keep asking a destination that cannot tell yet (its
receiver may still be checking the pages) before the source stays paused for good."""
DESTINATION_CHECK_INTERVAL_S = 0.5
HANDOVER_ANSWER_S = 60.0
"""After VERIFY, how long to wait for each answer (VERIFIED, ACTIVATED) before treating it as
lost and asking the destination's agent (the receiver's own idle timeout is as long)."""


class MigrationEngine:
    """Migrates one VM from a source to a destination receiver over one channel."""

    def __init__(
        self,
        *,
        plugins: NovaCronPluginManager,
        settings: MigrationSettings,
        plan: MigrationPlan,
        vm: str,
        source_name: str,
        destination_name: str,
        migration_id: str | None = None,
        on_event: EventCallback | None = None,
        rollback_fence: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.plugins = plugins
        self._rollback_fence = rollback_fence
        self.settings = settings
        self.plan = plan
        self.vm = vm
        self.source_name = source_name
        self.destination_name = destination_name
        self.migration_id = migration_id or uuid.uuid4().hex[:12]
        self._on_event = on_event
        self._cancelled = False
        self._timed_out = False
        self._committed = False
        # The task running ``run`` while a cancel may still interrupt it (before the commit),
        # and how many times this engine interrupted it.
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interrupts = 0
        self._handed_over = False
        # The hand-over's own failure when a caller's cancel waited for it (see run).
        self._handover_error: BaseException | None = None
        self.report: MigrationReport | None = None
        self._phase = MigrationPhase.PLANNING
        self._round = 0
        self._pages_total = 0
        self._pages_sent = 0
        self._wire_bytes = 0
        self._bucket = (
            TokenBucket(settings.max_bandwidth_bps) if settings.max_bandwidth_bps else None
        )
        self._link = LinkMeter()
        # A link rate measured by the sending side, for the encoder before its next batch.
        self._link_hint: float | None = None
        self._rtt_s: float | None = None

    # -- public ------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the migration: before the commit (VERIFY) it rolls back at once, even while it
        waits on a silent destination; after it, the hand-over finishes. Thread-safe."""
        self._cancelled = True
        self._interrupt()

    def _interrupt(self) -> None:
        """Wake a run that waits (on the destination, the link, the hypervisor) so that it
        rolls back; never once the switch-over is committed or a rollback has started."""
        loop, task = self._loop, self._task
        if loop is None or task is None or self._committed:
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if not here:
            loop.call_soon_threadsafe(self._interrupt)
            return
        if asyncio.current_task() is task:
            # From inside the run (an event callback, a plugin's event hook): a cancel of the
            # running task would stay pending past the engine's own next error and land in the
            # rollback; it is issued between steps instead (re-checked then).
            loop.call_soon(self._interrupt)
            return
        if not task.done():
            self._interrupts += 1
            task.cancel()

    def _on_timeout(self) -> None:
        self._timed_out = True
        self._interrupt()

    @property
    def phase(self) -> MigrationPhase:
        """Where the migration is now."""
        return self._phase

    async def run(
        self,
        source: MigrationSource,
        channel: Channel,
        *,
        hello: dict[str, Any] | None = None,
        check_destination: DestinationCheck | None = None,
    ) -> MigrationReport:
        """Migrate; returns the report or raises MigrationError after rolling back.

        ``hello`` adds fields to the HELLO frame (the agent puts its routing token there).
        ``check_destination`` is asked only when the commit's answer was lost.
        """
        info = source.info()
        self._pages_total = info.page_count
        report = MigrationReport(
            migration_id=self.migration_id,
            vm=self.vm,
            source=self.source_name,
            destination=self.destination_name,
            outcome=MigrationPhase.PLANNING,
            transport=self.plan.transport_name,
            codec=self.plan.codec_name,
            predictor=self.plan.predictor_name,
            streams=0,
            memory_bytes=info.page_count * info.page_size,
            page_size=info.page_size,
            downtime_limit_ms=self.settings.downtime_limit_ms,
        )
        self.report = report
        started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        watchdog = self._loop.call_later(self.settings.timeout_s, self._on_timeout)
        try:
            await self._handshake(channel, info.model_dump(mode="json"), hello or {})
            self._emit("planned", message=f"{info.page_count} pages via {report.transport}")
            run = _Run(
                source=source,
                channel=channel,
                # A codec may read files to start (DWCP reference files): off the event loop.
                encoder=await asyncio.to_thread(self.plan.codec.new_encoder, info.page_size),
                table=DigestTable(info.page_count),
                report=report,
                started=started,
                page_size=info.page_size,
            )
            await source.start_tracking()
            if self.settings.precopy:
                pending = await self._precopy(run)
            else:
                pending = await source.collect_dirty()  # every page: stop-and-copy
            await self._switch_over(run, pending, check_destination)
        except BaseException as exc:
            self._task = None  # no more interrupts: the rollback must not be cut short
            watchdog.cancel()
            exc = self._own_interrupt(exc)
            # A hand-over that failed while the caller cancelled: its error decides what
            # happens to the VM, the caller's cancellation is what propagates.
            cause = exc
            if isinstance(exc, asyncio.CancelledError) and self._handover_error is not None:
                cause = self._handover_error
            # Shielded like the hand-over: a caller's cancel (a timeout around run, say) that
            # arrives during the rollback waits for it, then propagates.
            settling = asyncio.ensure_future(self._fail(source, channel, report, cause))
            while not settling.done():
                try:
                    await asyncio.wait({settling})
                except asyncio.CancelledError:
                    exc = asyncio.CancelledError()
            settling.result()
            if isinstance(exc, asyncio.CancelledError):
                raise exc from (cause if cause is not exc else None)
            raise self._as_migration_error(cause) from cause
        finally:
            self._task = None
            watchdog.cancel()
            report.total_s = time.monotonic() - started
            report.pages_sent = self._pages_sent
            report.bytes_on_wire = channel.stats().wire_bytes_sent
            report.wire_ratio = report.bytes_on_wire / max(1, report.memory_bytes)
            report.streams = max(report.streams, channel.stats().streams)
        report.outcome = MigrationPhase.COMPLETED
        self._phase = MigrationPhase.COMPLETED
        self._emit("completed", message=f"downtime {report.downtime_ms:.0f} ms")
        return report

    # -- steps -------------------------------------------------------------------------------
    async def _handshake(
        self, channel: Channel, info: dict[str, Any], hello: dict[str, Any]
    ) -> None:
        body = {
            "protocol": protocol.PROTOCOL_VERSION,
            "migration_id": self.migration_id,
            "info": info,
            "codec": self.plan.codec_name,
            "verify": self.settings.verify,
            **hello,
        }
        await channel.send(protocol.pack_json(Msg.HELLO, body))
        await protocol.expect_json(channel, Msg.READY)
        # The hand-over costs a round trip of downtime (VERIFY, then VERIFIED): measured here,
        # on the idle link, for the switch-over rule.
        trips = []
        for number in range(RTT_PINGS):
            sent = time.monotonic()
            await channel.send(protocol.pack_json(Msg.PING, {"n": number}))
            await protocol.expect(channel, Msg.PONG)
            trips.append(time.monotonic() - sent)
        self._rtt_s = min(trips)
        if self.report is not None:
            self.report.rtt_ms = self._rtt_s * 1000

    async def _precopy(self, run: _Run) -> list[int]:
        """Send rounds until the remaining dirty set fits the downtime limit; return it."""
        self._phase = MigrationPhase.PRECOPY
        pending = await run.source.collect_dirty()
        best = len(pending)
        stalled = 0
        while True:
            self._check_cancel(run.started)
            ratio, link_bps = await self._round_trip(run, pending)
            pending = await run.source.collect_dirty()
            estimate = self.plan.predictor.predict(max(0.1, self.settings.downtime_limit_ms / 1000))
            if estimate is not None:
                run.report.predicted_bps = estimate.mean_bps
            # The codec wants the link's rate: measured from backpressure when this round's
            # sends waited for the link, else the predictor's estimate of what rounds achieve.
            hint = link_bps
            if hint is None and estimate is not None:
                hint = estimate.mean_bps
            if hint is not None:
                run.encoder.set_bandwidth_hint(hint)
                self._link_hint = None
            # The first round sends every page, most of them never written again (zero pages,
            # cold data): its ratio says little of the pages the guest writes. Until a round of
            # re-sent pages has measured theirs, the remainder is counted at full size.
            if self._round == 1:
                ratio = 1.0
            remaining = int(len(pending) * run.page_size * max(ratio, 0.01))
            if should_switch_over(
                self.plugins, remaining, estimate, self.settings, rtt_s=self._rtt_s
            ):
                return pending
            if len(pending) < best * 0.95:
                best, stalled = len(pending), 0
            else:
                stalled += 1
            over_rounds = self._round >= self.settings.max_rounds
            if stalled >= self.settings.stall_rounds or over_rounds:
                if await self._on_stall(run, len(pending), over_rounds=over_rounds):
                    return pending  # forced switch-over
                stalled, best = 0, len(pending)

    async def _round_trip(self, run: _Run, pending: Sequence[int]) -> tuple[float, float | None]:
        """One pre-copy round, acknowledged by the destination; returns its wire ratio and the
        link's rate when its sends waited for the link (else None)."""
        self._round += 1
        self._emit("round_started", pages_remaining=len(pending))
        t0 = time.monotonic()
        before = run.encoder.stats()
        bytes_before, in_before = before.bytes_out, before.bytes_in
        await self._send_pages(run, pending, timed=True)
        await run.channel.send(protocol.pack_json(Msg.ROUND_END, {"round": self._round}))
        await protocol.expect_json(run.channel, Msg.ROUND_ACK)
        seconds = time.monotonic() - t0
        run.report.streams = max(run.report.streams, run.channel.stats().streams)
        stats = run.encoder.stats()
        wire = stats.bytes_out - bytes_before
        goodput_bps = 8 * wire / max(seconds, 1e-9)
        link_bps = self._link.round_done(goodput_bps, seconds)
        if link_bps is not None:
            run.report.link_bps = link_bps
        if wire >= MIN_SAMPLE_BYTES:
            sample = BandwidthSample(
                t=time.monotonic(), bits_per_second=goodput_bps, duration_s=seconds
            )
            self.plan.predictor.observe([sample])
        run.report.rounds.append(
            RoundReport(
                round=self._round,
                pages=len(pending),
                wire_bytes=wire,
                seconds=seconds,
                throttle=run.throttle,
            )
        )
        self._emit(
            "round_finished",
            pages_remaining=len(pending),
            data={"seconds": seconds, "wire_bytes": wire},
        )
        return wire / max(1, stats.bytes_in - in_before), link_bps

    async def _on_stall(self, run: _Run, dirty: int, *, over_rounds: bool) -> bool:
        """Rounds stopped shrinking: throttle, force (returns True) or abort (raises)."""
        settings = self.settings
        if settings.on_stall == "force":
            run.report.verification["forced_switchover"] = True
            return True
        can_throttle = (
            settings.on_stall == "throttle"
            and settings.auto_converge
            and run.throttle < settings.throttle_max
            and not over_rounds
        )
        if can_throttle:
            step = (
                settings.throttle_initial
                if run.throttle == 0
                else (run.throttle + settings.throttle_increment)
            )
            run.throttle = min(settings.throttle_max, step)
            await run.source.set_throttle(run.throttle)
            run.report.max_throttle = run.throttle
            self._emit(
                "throttled",
                data={"throttle": run.throttle},
                message=f"guest throttled to {100 * (1 - run.throttle):.0f}% speed",
            )
            return False
        why = (
            f"{settings.max_rounds} rounds"
            if over_rounds
            else f"{settings.stall_rounds} rounds without progress"
        )
        trip = ""
        if self._rtt_s is not None:
            trip = (
                f", round trip {self._rtt_s * 1000:.0f} ms of the "
                f"{settings.downtime_limit_ms:.0f} ms limit"
            )
        msg = (
            f"migration did not converge after {why} (dirty set {dirty} pages, "
            f"throttle {run.throttle:.2f}{trip}); raise downtime_limit_ms, allow throttling "
            "(on_stall: throttle) or force the switch-over (on_stall: force)"
        )
        raise MigrationAbortedError(msg)

    async def _switch_over(
        self, run: _Run, pending: Sequence[int], check_destination: DestinationCheck | None
    ) -> None:
        """Pause, send the rest, and hand over: the destination resumes on a matching VERIFY."""
        self._check_cancel(None)
        self._phase = MigrationPhase.SWITCHOVER
        paused_at = time.monotonic()
        source, channel, table = run.source, run.channel, run.table
        await source.pause()
        final = sorted(set(pending) | set(await source.collect_dirty()))
        self._emit("switchover", pages_remaining=len(final))
        wire_before = self._wire_bytes
        await self._send_pages(run, final, timed=False)
        await channel.send(protocol.pack_bytes(Msg.DEVICE, await source.device_state()))
        timing = SwitchoverReport(
            pages=len(final),
            wire_bytes=self._wire_bytes - wire_before,
            sent_ms=(time.monotonic() - paused_at) * 1000,
            verified_ms=0.0,
            activated_ms=0.0,
        )
        self._phase = MigrationPhase.VERIFYING
        if self.settings.verify == "full":
            await self._rehash_all(run)
        self._check_cancel(None)  # the last moment a cancel rolls back
        verify = protocol.pack_json(
            Msg.VERIFY, {"table": table.summary(), "final_pages": len(final)}
        )
        # From here on the destination may run the VM (it resumes it as soon as its check
        # passes): never roll back unless it says the check failed, or that it does not run it.
        # The hand-over, VERIFY's send included, runs shielded: cancels (any number of them)
        # wait for it, so it never stops half way, and the caller cannot close the channel
        # under it; its own outcome decides, then a cancel propagates.
        self._committed = True
        finish = asyncio.ensure_future(
            self._finish(run, verify, paused_at, timing, check_destination)
        )
        interrupted = False
        while not finish.done():
            try:
                # wait() neither cancels the hand-over nor raises its error: both decided below.
                await asyncio.wait({finish})
            except asyncio.CancelledError:
                interrupted = True
        if finish.cancelled():
            raise asyncio.CancelledError
        error = finish.exception()
        if interrupted:
            # The caller's cancellation propagates (not converted to the hand-over's error),
            # and the hand-over's own outcome still decides what happens to the VM.
            self._handover_error = error
            raise asyncio.CancelledError
        if error is not None:
            raise error

    async def _finish(
        self,
        run: _Run,
        verify: bytes,
        paused_at: float,
        timing: SwitchoverReport,
        check_destination: DestinationCheck | None,
    ) -> None:
        """Send VERIFY, wait for VERIFIED and ACTIVATED (or ask the destination), then release
        the source."""
        report, table = run.report, run.table
        try:
            await run.channel.send(verify)
            result = await asyncio.wait_for(
                protocol.expect_json(run.channel, Msg.VERIFIED), HANDOVER_ANSWER_S
            )
            timing.verified_ms = (time.monotonic() - paused_at) * 1000
            report.verification.update(
                {k: v for k, v in result.items() if k != "ok"} | {"table_digest": table.summary()}
            )
            if not result.get("ok"):
                self._committed = False  # the destination discards the VM: safe to roll back
                try:
                    _, body = await asyncio.wait_for(
                        protocol.expect(run.channel, Msg.TABLE), HANDOVER_ANSWER_S
                    )
                except (NovaCronError, OSError, TimeoutError) as exc:
                    body, lost = memoryview(b""), f"(table not received: {exc})"
                else:
                    lost = "(table too large to send)"
                bad = table.mismatches(bytes(body)) if body else lost
                msg = (
                    f"destination memory differs from the source ({result.get('reason', '')}); "
                    f"first mismatching pages: {bad}; the VM keeps running at the source"
                )
                raise VerificationError(msg)
            self._emit("verified", message=f"{table.page_count} page digests match")
            await asyncio.wait_for(
                protocol.expect_json(run.channel, Msg.ACTIVATED), HANDOVER_ANSWER_S
            )
        except VerificationError:
            raise
        except (NovaCronError, OSError, TimeoutError) as exc:
            confirmed = await _ask_destination(check_destination)
            if confirmed is not True:
                raise _AmbiguousCommitError(confirmed, exc) from exc
        report.downtime_ms = timing.activated_ms = (time.monotonic() - paused_at) * 1000
        report.switchover = timing
        stats = run.encoder.stats()
        report.codec_stats, report.codec_seconds = dict(stats.by_kind), dict(stats.seconds)
        self._handed_over = True  # the destination runs the VM, whatever happens next
        await run.source.release()
        precopy_s = sum(r.seconds for r in report.rounds)
        if precopy_s > 0:
            report.measured_bps = 8 * sum(r.wire_bytes for r in report.rounds) / precopy_s

    async def _send_pages(self, run: _Run, pages: Sequence[int], *, timed: bool) -> None:
        """Read, digest, encode and send ``pages``, overlapping CPU work with the network."""
        source, channel, encoder, table = run.source, run.channel, run.encoder, run.table
        page_size = run.page_size
        batch = _batch_size(self.settings.batch_pages, len(pages), channel.stats().streams)
        # Unbounded queue, bounded by the semaphore: the producer's final sentinel never blocks,
        # so a failing or cancelled producer cannot leave the consumer (or itself) stuck.
        queue: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(PIPELINE_DEPTH)

        async def produce() -> None:
            try:
                for off in range(0, len(pages), batch):
                    # The paused send (the switch-over's) is not timed, but may be cancelled.
                    self._check_cancel(run.started if timed else None)
                    await slots.acquire()
                    indices = pages[off : off + batch]
                    data = await source.read_pages(indices)
                    if self._link_hint is not None:
                        # Between encodes (never while one runs on the worker thread).
                        encoder.set_bandwidth_hint(self._link_hint)
                        self._link_hint = None
                    payload = await asyncio.to_thread(
                        _digest_and_encode, encoder, table, indices, data, page_size
                    )
                    queue.put_nowait((payload, len(indices)))
            finally:
                queue.put_nowait(None)  # the consumer stops; ``await producer`` raises if failed

        producer = asyncio.create_task(produce())
        last_progress = time.monotonic()
        try:
            while (item := await queue.get()) is not None:
                slots.release()
                payload, count = item
                frame = protocol.pack_bytes(Msg.PAGES, payload)
                sending = time.monotonic()
                if self._bucket is not None:
                    await self._bucket.consume(len(frame))
                await channel.send(frame)
                link_bps = self._link.record(len(frame), time.monotonic() - sending)
                if link_bps is not None:
                    log.debug(
                        "round %d: link-bound window, %.1f Mbit/s", self._round, link_bps / 1e6
                    )
                    self._link_hint = run.report.link_bps = link_bps
                self._pages_sent += count
                self._wire_bytes += len(frame)
                if time.monotonic() - last_progress >= PROGRESS_INTERVAL_S:
                    last_progress = time.monotonic()
                    self._emit("progress")
            await producer
        finally:
            self._link.pause()  # the time until the next round's sends is not the link's
            if not producer.done():
                producer.cancel()
            # Its outcome is retrieved even when the consumer failed first.
            await asyncio.gather(producer, return_exceptions=True)

    async def _rehash_all(self, run: _Run) -> None:
        """verify=full: digest all memory again while paused, replacing the sent digests."""
        source, table = run.source, run.table
        info = source.info()
        step = 1024
        for off in range(0, info.page_count, step):
            indices = list(range(off, min(off + step, info.page_count)))
            data = await source.read_pages(indices)
            table.update(indices, await asyncio.to_thread(page_digests, data, info.page_size))

    # -- failure -----------------------------------------------------------------------------
    async def _fail(
        self,
        source: MigrationSource,
        channel: Channel,
        report: MigrationReport,
        exc: BaseException,
    ) -> None:
        report.error = str(exc) or type(exc).__name__
        if self._handed_over:
            # The destination runs the VM (a cancel that waited for the hand-over, or a
            # failure releasing the source): never resume it here.
            report.outcome = self._phase = MigrationPhase.COMPLETED
            report.error = (
                "cancelled after the switch-over was committed: the VM moved"
                if isinstance(exc, asyncio.CancelledError)
                else f"the VM moved, but the source copy was not released: {report.error}"
            )
            self._emit("completed", message=report.error)
            return
        denied = isinstance(exc, _AmbiguousCommitError) and exc.confirmed is False
        if self._committed and not denied:
            # After VERIFY only a destination that says it does not run the VM (or whose
            # check failed, which uncommits) lets the source resume: anything else may leave
            # the VM running there, so the source stays paused rather than run it twice.
            if not isinstance(exc, _AmbiguousCommitError):
                report.error = (
                    f"{report.error}; the destination may run the VM, so it stays paused "
                    "here: check the destination (novacron migrations) before resuming it"
                )
            report.outcome = MigrationPhase.FAILED
            self._phase = MigrationPhase.FAILED
            self._emit("failed", message=report.error)
            return
        try:
            await asyncio.wait_for(
                channel.send(protocol.pack_json(Msg.ABORT, {"reason": report.error})), 2
            )
        except (NovaCronError, OSError, TimeoutError):
            log.debug("could not tell the destination to abort", exc_info=True)
        if self._committed and self._rollback_fence is not None:
            try:
                owned = await self._rollback_fence()
            except NovaCronError:
                log.exception("could not re-claim %s before rolling back", self.vm)
                owned = False
            if not owned:
                report.outcome = MigrationPhase.FAILED
                self._phase = MigrationPhase.FAILED
                report.error = (
                    f"{report.error}; another host may own the VM now, so it stays paused "
                    "here: check the ownership record (novacron status --cluster)"
                )
                self._emit("failed", message=report.error)
                return
        try:
            await source.rollback()
        except Exception as rollback_error:
            log.exception("rollback of %s failed", self.vm)
            report.outcome = MigrationPhase.FAILED
            self._phase = MigrationPhase.FAILED
            report.error = (
                f"{report.error}; the rollback failed too ({rollback_error}), so the VM is not "
                "running at the source: check its state there before resuming or destroying it"
            )
            self._emit("failed", message=report.error)
            return
        cancelled = isinstance(exc, (MigrationAbortedError, asyncio.CancelledError))
        report.outcome = (
            MigrationPhase.CANCELLED if self._cancelled else (MigrationPhase.ROLLED_BACK)
        )
        self._phase = report.outcome
        self._emit(
            "rolled_back",
            message=f"{'aborted' if cancelled else 'failed'}: {report.error}; "
            "the VM keeps running at the source",
        )

    def _as_migration_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, asyncio.CancelledError):
            return exc
        report = self.report
        failed = report is not None and report.outcome is MigrationPhase.FAILED
        if report is not None and (self._handed_over or self._committed or failed):
            # Not (or not cleanly) rolled back: _fail said what happened (the VM moved, stays
            # paused, or the rollback failed).
            return MigrationError(f"migration of {self.vm}: {report.error}")
        if isinstance(exc, _AmbiguousCommitError):
            return MigrationError(str(exc))
        if isinstance(exc, MigrationError):
            return exc
        return MigrationError(f"migration of {self.vm} failed and was rolled back: {exc}")

    def _own_interrupt(self, exc: BaseException) -> BaseException:
        """A cancellation this engine caused (cancel(), timeout_s) as the error it stands for;
        anything else, a caller's own cancellation included, as it is."""
        if not self._interrupts:
            return exc
        task = asyncio.current_task()
        remaining = 0
        for _ in range(self._interrupts):
            remaining = task.uncancel() if task is not None else 0
        self._interrupts = 0
        if not isinstance(exc, asyncio.CancelledError) or remaining:
            return exc  # another error won, or the caller cancelled too
        try:
            self._check_cancel(0.0 if self._timed_out else None)
        except MigrationAbortedError as abort:
            return abort
        return exc

    def _check_cancel(self, started: float | None) -> None:
        if self._cancelled:
            msg = f"migration {self.migration_id} was cancelled; the VM keeps running at the source"
            raise MigrationAbortedError(msg)
        if self._timed_out or (
            started is not None and time.monotonic() - started > self.settings.timeout_s
        ):
            msg = (
                f"migration {self.migration_id} exceeded timeout_s={self.settings.timeout_s:.0f}"
                "; the VM keeps running at the source"
            )
            raise MigrationAbortedError(msg)

    def _emit(
        self,
        kind: MigrationEventKind,
        *,
        pages_remaining: int = 0,
        message: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        event = MigrationEvent(
            migration_id=self.migration_id,
            vm=self.vm,
            kind=kind,
            phase=self._phase,
            round=self._round,
            pages_total=self._pages_total,
            pages_sent=self._pages_sent,
            pages_remaining=pages_remaining,
            bytes_on_wire=self._wire_bytes,
            message=message,
            data=data or {},
        )
        self.plugins.emit_migration_event(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("migration event callback failed")


def _batch_size(batch_pages: int, pages: int, streams: int) -> int:
    """Pages per batch: ``batch_pages``, or fewer so that a short send has a frame per stream.

    A transport that spreads frames over several streams sends each frame on one of them, at
    that stream's share of the link: one large frame (a short round, the pages sent while
    paused) would cross at a fraction of the link's rate (DWCP over an emulated 10 Mbit/s,
    40 ms link: a 226 KB frame took 464 ms, about twice what the link needs).
    """
    if streams <= 1 or pages >= batch_pages * streams:
        return batch_pages
    return max(MIN_SPLIT_BATCH_PAGES, min(batch_pages, -(-pages // streams)))


async def _ask_destination(check: DestinationCheck | None) -> bool | None:
    """Whether the destination runs the VM, asking again while it cannot tell yet."""
    if check is None:
        return None
    deadline = time.monotonic() + DESTINATION_CHECK_S
    while True:
        try:
            confirmed = await check()
        except Exception:
            # A check that breaks tells nothing: unknown, never "not running".
            log.exception("asking the destination whether it runs the VM failed")
            confirmed = None
        if confirmed is not None or time.monotonic() >= deadline:
            return confirmed
        await asyncio.sleep(DESTINATION_CHECK_INTERVAL_S)


class _AmbiguousCommitError(MigrationError):
    """VERIFY was sent but VERIFIED and ACTIVATED never both came back."""

    def __init__(self, confirmed: bool | None, cause: BaseException) -> None:
        self.confirmed = confirmed
        if confirmed is False:
            text = (
                f"the destination did not confirm the switch-over ({cause}) and reports it does "
                "not run the VM; rolled back to the source"
            )
        else:
            text = (
                f"the destination did not confirm the switch-over ({cause}) and could not say "
                "whether it runs the VM; the source VM is kept PAUSED (not destroyed) to avoid "
                "running twice: check the destination, then resume or destroy the source"
            )
        super().__init__(text)


@dataclass
class _Run:
    """What one migration run works with."""

    source: MigrationSource
    channel: Channel
    encoder: PageEncoder
    table: DigestTable
    report: MigrationReport
    started: float
    page_size: int
    throttle: float = 0.0


def _digest_and_encode(
    encoder: PageEncoder,
    table: DigestTable,
    indices: Sequence[int],
    data: bytes,
    page_size: int,
) -> bytes:
    table.update(indices, page_digests(data, page_size))
    return encoder.encode(PageBatch(indices=list(indices), data=data, page_size=page_size))
