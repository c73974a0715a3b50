"""The destination side of a live migration: decode, write, verify, resume only on a match.

The receiver never resumes a VM whose per-page digests differ from the source's, and discards
everything (``sink.abort()``) when the channel fails, a frame is bad, or the source aborts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

from novacron_sdk.encoding.interface import PageBatch, PageDecoder
from novacron_sdk.errors import MigrationError, NovaCronError
from novacron_sdk.hypervisors.interface import MigrationSink, MigrationSourceInfo
from novacron_sdk.migration import protocol
from novacron_sdk.migration.digests import ALGORITHM, DigestTable, page_digests
from novacron_sdk.migration.protocol import Msg
from novacron_sdk.models import VM
from novacron_sdk.transport.interface import Channel

log = logging.getLogger(__name__)

SPOT_CHECK_PAGES = 256
"""Pages, besides the final round's, whose stored content is re-read from the sink."""
MAX_TABLE_BYTES = 32 * 1024 * 1024
"""The largest digest table sent back after a mismatch (well within any frame limit)."""


class MigrationReceiver:
    """Receives one VM into ``sink``. ``state`` is pending, active or aborted."""

    def __init__(
        self,
        sink: MigrationSink,
        info: MigrationSourceInfo,
        decoder: PageDecoder,
        *,
        idle_timeout_s: float = 60.0,
        verify: str = "pages",
        fence: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.sink = sink
        self.info = info
        self.decoder = decoder
        self.idle_timeout_s = idle_timeout_s
        self.verify = verify
        self.fence = fence
        self.state = "pending"
        self.error: str | None = None
        self.vm: VM | None = None
        self.table = DigestTable(info.page_count)
        self._since_round: set[int] = set()
        self.pages_written = 0

    async def run(self, channel: Channel) -> VM | None:
        """Serve the migration on ``channel`` (after HELLO); returns the VM once active."""
        try:
            await channel.send(protocol.pack_json(Msg.READY, {"page_count": self.info.page_count}))
            while True:
                frame = await asyncio.wait_for(channel.recv(), self.idle_timeout_s)
                kind, body = protocol.split(frame)
                if kind is Msg.PAGES:
                    await self._pages(body)
                elif kind is Msg.ROUND_END:
                    round_no = protocol.parse_json(kind, body).get("round")
                    self._since_round.clear()
                    await channel.send(
                        protocol.pack_json(
                            Msg.ROUND_ACK, {"round": round_no, "pages_written": self.pages_written}
                        )
                    )
                elif kind is Msg.DEVICE:
                    await self.sink.set_device_state(bytes(body))
                elif kind is Msg.PING:
                    await channel.send(protocol.pack_bytes(Msg.PONG, bytes(body)))
                elif kind is Msg.VERIFY:
                    # A mismatch raises (after telling the source); a match resumes the VM at
                    # once: the source, paused, committed to the hand-over when it sent VERIFY.
                    await self._verify(channel, protocol.parse_json(kind, body))
                    # Split-brain fence: resume only after winning the VM's ownership record.
                    if self.fence is not None and not await self.fence():
                        msg = (
                            "another host owns this VM now (the ownership compare-and-swap "
                            "was lost); not resuming it here"
                        )
                        raise MigrationError(msg)
                    self.vm = await self.sink.activate()
                    self.state = "active"
                    await self._tell_activated(channel, self.vm)
                    return self.vm
                elif kind is Msg.ABORT:
                    reason = protocol.parse_json(kind, body).get("reason", "no reason given")
                    msg = f"source aborted the migration: {reason}"
                    raise MigrationError(msg)
                else:
                    msg = f"protocol error: unexpected {kind.name} frame at the destination"
                    raise MigrationError(msg)
        except BaseException as exc:
            await self._abort(channel, exc)
            if isinstance(exc, (NovaCronError, OSError, TimeoutError)):
                return None
            raise

    async def _tell_activated(self, channel: Channel, vm: VM) -> None:
        """ACTIVATED to the source. The VM runs here whatever becomes of this answer: a source
        that misses it asks this agent (which reports "active"), never aborts a running VM."""
        try:
            await channel.send(
                protocol.pack_json(Msg.ACTIVATED, {"vm": vm.model_dump(mode="json")})
            )
        except (NovaCronError, OSError, TimeoutError) as exc:
            log.warning(
                "VM %s runs here; the source did not get ACTIVATED (%s): it will ask", vm.name, exc
            )

    async def _pages(self, body: memoryview) -> None:
        batch, digests = await asyncio.to_thread(
            _decode_and_digest, self.decoder, bytes(body), self.info.page_size
        )
        for index in batch.indices:
            if not 0 <= index < self.info.page_count:
                msg = f"page index {index} is outside the VM's {self.info.page_count} pages"
                raise MigrationError(msg)
        await self.sink.write_pages(batch.indices, batch.data)
        self.table.update(batch.indices, digests)
        self._since_round.update(batch.indices)
        self.pages_written += len(batch.indices)

    async def _verify(self, channel: Channel, request: dict[str, object]) -> None:
        """Compare digest tables, and re-read pages from the sink to check what it stored."""
        if self.verify == "full":
            check = list(range(self.info.page_count))
        else:
            rng = random.Random(self.info.page_count)
            sample = rng.sample(
                range(self.info.page_count), min(SPOT_CHECK_PAGES, self.info.page_count)
            )
            check = sorted(self._since_round | set(sample))
        stored = await self.sink.page_digests(check)
        bad_stored = [i for i, d in zip(check, stored, strict=True) if d != self.table.get(i)]
        table_ok = request.get("table") == self.table.summary()
        missing = self.table.unset_pages()
        ok = table_ok and not bad_stored and missing == 0
        reason = ""
        if not table_ok:
            reason = "digest tables differ"
        if bad_stored:
            reason += f"; pages stored wrongly by the sink: {bad_stored[:20]}"
        if missing:
            reason += f"; {missing} pages never arrived"
        await channel.send(
            protocol.pack_json(
                Msg.VERIFIED,
                {
                    "ok": ok,
                    "reason": reason.strip("; "),
                    "pages_compared": self.info.page_count,
                    "sink_pages_checked": len(check),
                    "mismatches": len(bad_stored) + (0 if table_ok else 1),
                    "algorithm": ALGORITHM,
                },
            )
        )
        if not ok:
            # The source names the first mismatching pages from it; a table too large for one
            # frame (VMs of 8 GiB and more: 16 bytes a page) goes empty rather than not at all.
            raw = self.table.raw()
            table = raw if len(raw) <= MAX_TABLE_BYTES else b""
            await channel.send(protocol.pack_bytes(Msg.TABLE, table))
            msg = f"verification failed: {reason.strip('; ')}"
            raise MigrationError(msg)

    async def _abort(self, channel: Channel, exc: BaseException) -> None:
        if self.state == "active":
            # Resumed here (a cancel that hit the ACTIVATED send): the VM is this host's now;
            # discarding it would leave it running nowhere, or twice once the source resumes.
            log.warning("after the VM resumed here: %s", str(exc) or type(exc).__name__)
            return
        if self.state == "aborted":
            return  # discarded already (by whoever gave up on this receiver)
        self.state = "aborted"
        self.error = str(exc) or type(exc).__name__
        log.warning("incoming migration aborted: %s", self.error)
        try:
            await self.sink.abort()
        except Exception:
            log.exception("sink abort failed")
        if not isinstance(exc, MigrationError) or "source aborted" not in self.error:
            try:
                await asyncio.wait_for(
                    channel.send(protocol.pack_json(Msg.ERROR, {"reason": self.error})), 2
                )
            except (NovaCronError, OSError, TimeoutError):
                log.debug("could not report the error to the source", exc_info=True)


def _decode_and_digest(
    decoder: PageDecoder, payload: bytes, page_size: int
) -> tuple[PageBatch, Sequence[bytes]]:
    batch = decoder.decode(payload)
    if batch.page_size != page_size:
        msg = f"decoded page size {batch.page_size} differs from the VM's {page_size}"
        raise MigrationError(msg)
    return batch, page_digests(batch.data, page_size)
