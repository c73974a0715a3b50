"""Carry QEMU's migration stream over a NovaCron transport: unix socket <-> channel, both ways.

The source QEMU connects to a unix socket where :class:`StreamBridgeSource` listens; every
connection it opens (the main migration channel, then one per multifd channel) is carried by
its own transport channel to :class:`StreamBridgeSink` at the destination, which connects
to the destination QEMU's incoming unix socket. QEMU 7.2 takes the *first* connection that
arrives as the main channel, so the sink connects in the order the source accepted:
connection ``n`` is opened only after connections ``0..n-1`` are.

Frames on a channel: ``H`` + JSON hello (first frame, source to sink: ``version``,
``session``, ``index``, ``codec`` and optional ``references``), ``D`` + bytes (stream data,
either direction), ``Z`` + one zstd frame and ``R`` + page references (source to sink, codec
``zstd`` only: see :mod:`novacron_libvirt.streamcodec` and :mod:`novacron_libvirt.pagerefs`),
``E`` (that direction has ended: half-close; the pump is :mod:`novacron_libvirt.streampump`).
A hello without ``version`` is version 1: codec
``raw``. The sink refuses a codec it does not know, so both ends agree or the migration fails
before QEMU sees a byte. Codec ``zstd`` is the default over DWCP (its data plane compresses),
``raw`` over other transports; the source chooses, the sink follows its hello.

The source keeps one channel connected ahead of QEMU's next connection, so connecting (a
few round trips over a WAN) overlaps libvirt's preparation of the destination instead of
delaying QEMU's first bytes. A spare channel that is closed unused sends no hello; the sink
drops it quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from novacron_libvirt.pagerefs import ReferenceIndex, ReferenceStore
from novacron_libvirt.streamcodec import (
    CODEC_RAW,
    CODEC_ZSTD,
    CODECS,
    ChunkDecoder,
    LevelController,
)
from novacron_libvirt.streampump import BridgeStats, connect_unix, pump
from novacron_sdk.errors import FrameError, TransportError
from novacron_sdk.transport.interface import Channel, Endpoint, Listener, Transport

logger = logging.getLogger(__name__)

__all__ = [
    "STREAM_OPTIONS",
    "BridgeStats",
    "StreamBridgeSink",
    "StreamBridgeSource",
    "default_codec",
]

WIRE_VERSION = 2
CLOSE_PATIENCE_S = 10.0
"""How long ``close()`` lets running connections finish before it cancels them."""
TURN_PATIENCE_S = 30.0
"""How long the sink waits for the connections before one to arrive (see ``turn_timeout_s``)."""
_HELLO = b"H"


def default_codec(transport: Transport) -> str:
    """The codec a source bridge uses unless told: zstd over DWCP, raw otherwise."""
    return CODEC_ZSTD if transport.name == "dwcp" else CODEC_RAW


# QEMU paces itself by how fast its socket takes the stream and stops the guest once the
# rest fits its downtime limit at that pace: every byte buffered past the socket is sent
# during the downtime. DWCP's defaults buffer for bulk transfers (4 MiB queue, 512 KiB
# unsent per stream); the bridge asks for less. The endpoint's own options win.
STREAM_OPTIONS: dict[str, dict[str, str]] = {
    "dwcp": {"send_queue_bytes": str(1 << 20), "notsent_lowat_bytes": str(128 << 10)},
}


class StreamBridgeSource:
    """Source end: QEMU connects to ``socket_path``; each connection goes over a channel.

    ``codec``: ``"zstd"`` or ``"raw"`` for QEMU's bytes toward the destination; None picks
    :func:`default_codec`. ``preconnect``: keep one channel connected ahead of QEMU.
    ``connect_options``: endpoint options for its channels (default: ``STREAM_OPTIONS`` of
    the transport). ``reference_files``: files the destination holds too (a direct-boot
    kernel, an initrd, base images); with codec zstd, RAM pages found in them are sent as
    references (:mod:`novacron_libvirt.pagerefs`). The sink needs the same files.
    """

    def __init__(
        self,
        transport: Transport,
        endpoint: Endpoint,
        socket_path: Path,
        session: str,
        *,
        codec: str | None = None,
        preconnect: bool = True,
        connect_options: Mapping[str, str] | None = None,
        reference_files: Sequence[Path] = (),
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.reference_files = list(reference_files)
        self._indexing: asyncio.Future[ReferenceIndex] | None = None
        options = STREAM_OPTIONS.get(transport.name, {})
        if connect_options is not None:
            options = dict(connect_options)
        self._connect_to = endpoint.model_copy(update={"options": {**options, **endpoint.options}})
        self.socket_path = socket_path
        self.session = session
        self.codec = codec or default_codec(transport)
        if self.codec not in CODECS:
            msg = f"unknown stream codec {self.codec!r}: use one of {', '.join(CODECS)}"
            raise ValueError(msg)
        self.preconnect = preconnect
        self.stats = BridgeStats(codec=self.codec)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._spare: asyncio.Task[Channel] | None = None
        self.errors: list[BaseException] = []

    async def start(self) -> None:
        """Listen on the unix socket (QEMU, possibly another uid, must be able to connect)."""
        if self.reference_files and self.codec == CODEC_ZSTD and self._indexing is None:
            # Indexed while libvirt prepares the destination; the first connection waits.
            self._indexing = asyncio.ensure_future(
                asyncio.to_thread(ReferenceIndex, self.reference_files)
            )
            # A failure is raised to every connection that needs the index.
            self._indexing.add_done_callback(lambda task: task.cancelled() or task.exception())
        if self.socket_path.is_symlink() or (
            self.socket_path.exists() and not self.socket_path.is_socket()
        ):
            msg = (
                f"refusing to replace {self.socket_path} with the migration socket: it exists "
                "and is not a socket (remove it, or choose another socket path)"
            )
            raise TransportError(msg)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path))
        # QEMU may run as another (unprivileged) uid; a socket needs write access to connect.
        self.socket_path.chmod(0o666)
        self._connect_spare()

    def _connect_spare(self) -> None:
        if self.preconnect and self._server is not None:
            spare = asyncio.ensure_future(self.transport.connect(self._connect_to))
            # Its failure is handled when it is used (or irrelevant if it never is).
            spare.add_done_callback(lambda task: task.cancelled() or task.exception())
            self._spare = spare

    async def _channel(self) -> Channel:
        """The spare channel (and a new spare for the next connection), or a new one."""
        spare, self._spare = self._spare, None
        self._connect_spare()
        if spare is not None:
            try:
                return await spare
            except Exception as exc:  # a failed early connect gets one more chance now
                logger.info("the pre-connected migration channel failed (%s); connecting", exc)
        return await self.transport.connect(self._connect_to)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Numbered before the first await: connection callbacks start in accept order.
        index = self.stats.connections
        self.stats.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        channel: Channel | None = None
        try:
            channel = await self._channel()
            hello: dict[str, object] = {
                "version": WIRE_VERSION,
                "session": self.session,
                "index": index,
                "codec": self.codec,
            }
            references = await self._indexing if self._indexing is not None else None
            if references is not None:
                hello["references"] = references.digests
            await channel.send(_HELLO + json.dumps(hello).encode())
            controller = LevelController() if self.codec == CODEC_ZSTD else None
            await pump(
                reader,
                writer,
                channel,
                self.stats,
                outbound=True,
                controller=controller,
                references=references,
            )
        except Exception as exc:
            logger.warning("migration connection %d failed at the source bridge: %s", index, exc)
            self.errors.append(exc)
            await _close_both(writer, channel)  # pump closes both itself once it runs
        except asyncio.CancelledError:
            # close() gave up on this connection. Ending quietly: asyncio's unix server
            # logs a handler that ends cancelled as an error.
            await _close_both(writer, channel)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def close(self, timeout_s: float = CLOSE_PATIENCE_S) -> None:
        """Stop listening; give the connections ``timeout_s`` to finish, then cancel them.

        Their unix connections and channels are closed either way. Safe to call twice.
        """
        server, self._server = self._server, None
        bound = server is not None
        if server is not None:
            server.close()
            await server.wait_closed()
        if bound and self.socket_path.is_socket():  # never a file start() refused to replace
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        await _finish_tasks(set(self._tasks), timeout_s, "source")
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await (await spare).close()


async def _close_both(writer: asyncio.StreamWriter, channel: Channel | None) -> None:
    """Close a connection's unix socket and (if it got one) its channel, quietly."""
    writer.close()
    if channel is not None:
        with contextlib.suppress(Exception):
            await channel.close()


async def _finish_tasks(tasks: set[asyncio.Task[Any]], timeout_s: float, end: str) -> None:
    """Wait up to ``timeout_s`` for ``tasks``, then cancel those still running and reap them."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    if pending:
        logger.warning(
            "%d migration connection(s) still open at the %s bridge after %.1f s: cancelling",
            len(pending),
            end,
            timeout_s,
        )
        for task in pending:
            task.cancel()
        await asyncio.wait(pending)


class StreamBridgeSink:
    """Destination end: each channel is connected, in source order, to QEMU's socket.

    ``reference_files``: this host's copies of the files a source may refer to (see
    :class:`StreamBridgeSource`); matched by content, so their paths may differ.
    ``turn_timeout_s``: how long a connection waits for the ones before it (QEMU's order);
    past it, an earlier connection is taken as lost (it failed at the source before its
    hello) and the migration's connections are dropped.
    """

    def __init__(
        self,
        transport: Transport,
        endpoint: Endpoint,
        socket_path: Path,
        session: str,
        *,
        reference_files: Sequence[Path] = (),
        turn_timeout_s: float = TURN_PATIENCE_S,
    ) -> None:
        self.transport = transport
        self.reference_files = list(reference_files)
        self.turn_timeout_s = turn_timeout_s
        self._references = ReferenceStore({})
        self.requested = endpoint
        self.socket_path = socket_path
        self.session = session
        self.stats = BridgeStats()
        self.errors: list[BaseException] = []
        self._listener: Listener | None = None
        self._connected = 0
        self._failed = False
        self._turn = asyncio.Condition()
        self._waiting: set[asyncio.Task[Any]] = set()  # channels before their hello
        self._active: set[asyncio.Task[Any]] = set()
        self._queued: set[asyncio.Task[Any]] = set()  # waiting for their turn

    @property
    def endpoint(self) -> Endpoint:
        """Where the source bridge connects (the real port once started)."""
        if self._listener is None:
            msg = "the stream bridge sink is not started"
            raise TransportError(msg)
        return self._listener.endpoint

    async def start(self) -> None:
        """Start accepting channels."""
        if self.reference_files:
            self._references = await asyncio.to_thread(
                ReferenceStore.from_files, self.reference_files
            )
        self._listener = await self.transport.listen(self.requested, self._on_channel)

    @property
    def reference_digests(self) -> list[str]:
        """SHA-256 of the reference files this sink holds (after :meth:`start`)."""
        return self._references.digests

    async def _on_channel(self, channel: Channel) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._waiting.add(task)
        try:
            hello = await channel.recv()
        except (TransportError, asyncio.CancelledError):
            # A spare the source pre-connected and closed unused (or the sink is closing
            # while it waits): no QEMU connection is owed.
            await channel.close()
            return
        finally:
            if task is not None:
                self._waiting.discard(task)
        if task is not None:
            self._active.add(task)
        try:
            await self._serve(channel, hello)
        finally:
            if task is not None:
                self._active.discard(task)

    async def _serve(self, channel: Channel, hello: bytes) -> None:
        writer: asyncio.StreamWriter | None = None
        task = asyncio.current_task()
        try:
            index, codec, digests = self._check_hello(hello)
            references = self._references.select(digests) if digests else None
            decoder = ChunkDecoder(codec, references)
            if task is not None:
                self._queued.add(task)
            try:
                async with self._turn:
                    await self._wait_for_turn(index)
                    if self._failed:
                        msg = f"an earlier migration connection failed; dropping connection {index}"
                        raise TransportError(msg)
                    reader, writer = await connect_unix(self.socket_path)
                    self._connected += 1
                    self.stats.connections += 1
                    self.stats.codec = codec
                    self._turn.notify_all()
            finally:
                if task is not None:
                    self._queued.discard(task)
            await pump(reader, writer, channel, self.stats, outbound=False, decoder=decoder)
        except Exception as exc:
            logger.warning("migration connection failed at the sink bridge: %s", exc)
            self.errors.append(exc)
            async with self._turn:
                self._failed = True
                self._turn.notify_all()
            if writer is not None:
                writer.close()
            await channel.close()
        except asyncio.CancelledError:
            # close() gave up on it (pump closes both ends itself once it runs).
            if writer is not None:
                writer.close()
            with contextlib.suppress(Exception):
                await channel.close()
            raise

    async def _wait_for_turn(self, index: int) -> None:
        """Wait (holding ``_turn``) until connections ``0..index-1`` are connected, or failed.

        TransportError when they are not within ``turn_timeout_s``: the source closes a
        connection that fails before its hello, so the sink would otherwise wait forever.
        """
        try:
            await asyncio.wait_for(
                self._turn.wait_for(lambda: self._failed or self._connected == index),
                timeout=self.turn_timeout_s,
            )
        except TimeoutError:
            self._failed = True
            self._turn.notify_all()
            msg = (
                f"migration connection {index} arrived, but connection {self._connected} "
                f"before it did not within {self.turn_timeout_s} s (it failed at the source); "
                "dropping the migration's connections"
            )
            raise TransportError(msg) from None

    def _check_hello(self, frame: bytes) -> tuple[int, str, list[str]]:
        if frame[:1] != _HELLO:
            msg = "the first frame of a migration channel must be its hello"
            raise FrameError(msg)
        try:
            hello = json.loads(frame[1:])
            index = int(hello["index"])
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"unreadable migration channel hello: {exc}"
            raise FrameError(msg) from exc
        if hello.get("session") != self.session:
            got = hello.get("session")
            msg = f"migration channel for session {got!r}, expected {self.session!r}"
            raise TransportError(msg)
        version = int(hello.get("version", 1))
        if version > WIRE_VERSION:
            msg = (
                f"the source bridge speaks version {version}, this sink {WIRE_VERSION}: "
                "upgrade novacron-libvirt on the destination"
            )
            raise FrameError(msg)
        digests = hello.get("references", [])
        if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            msg = "migration channel hello with malformed references"
            raise FrameError(msg)
        return index, str(hello.get("codec", CODEC_RAW)), digests

    async def close(self, timeout_s: float = CLOSE_PATIENCE_S) -> None:
        """Stop accepting channels, drop unused ones, let the others finish. Safe twice.

        Connections still running after ``timeout_s`` are cancelled (and their sockets and
        channels closed).
        """
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        # Channels not past their hello, and connections waiting for their turn: no new
        # channel can arrive now, so neither can the connections they wait for.
        for task in [*self._waiting, *self._queued]:
            task.cancel()
        await _finish_tasks(self._waiting | self._active, timeout_s, "sink")
