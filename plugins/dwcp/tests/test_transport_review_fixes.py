"""Regressions from the transport review (r1-r8): each test failed before its fix.

All traffic is on loopback between real sockets; a raw socket plays a misbehaving or slow
peer where the scenario needs one. The only fault injector is named in its test's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from novacron_dwcp.transport.channel import MultiStreamChannel
from novacron_dwcp.transport.multistream import MultiStreamTransport
from novacron_dwcp.transport.reassembly import Reassembler
from novacron_dwcp.transport.stream import StreamConnection
from novacron_dwcp.transport.wire import (
    FLAG_RETRANSMIT,
    HEADER_SIZE,
    Hello,
    HelloKind,
    Kind,
    decode_header,
    encode_frame,
)
from novacron_sdk.errors import FrameError, TransportError
from novacron_sdk.testing.waiting import eventually
from novacron_sdk.transport.interface import Channel, Endpoint

DATACENTER = {"mode": "datacenter", "adapt": False, "resume_window_s": 0}
WAIT_S = 20
"""The bound of a wait for something that happens at once: only a hang reaches it."""


@asynccontextmanager
async def served(
    settings: dict[str, Any], handler: Any = None
) -> AsyncIterator[tuple[MultiStreamTransport, int, asyncio.Queue[MultiStreamChannel]]]:
    """A listener on loopback: (transport, port, queue of accepted channels)."""
    transport = MultiStreamTransport(settings)
    accepted: asyncio.Queue[MultiStreamChannel] = asyncio.Queue()
    channels: list[MultiStreamChannel] = []

    async def keep(channel: Channel) -> None:
        assert isinstance(channel, MultiStreamChannel)
        channels.append(channel)
        await accepted.put(channel)
        if handler is not None:
            await handler(channel)

    listener = await transport.listen(Endpoint(host="127.0.0.1"), keep)
    try:
        yield transport, listener.endpoint.port, accepted
    finally:
        await listener.close()
        end_now(*channels)


def end_now(*channels: MultiStreamChannel) -> None:
    """Close the sockets of channels a test is done with (at once, even when it failed)."""
    for channel in channels:
        if not channel.finished:
            channel.fail(TransportError("the test is over"))


def dial(port: int, kind: int, session: bytes, stream_id: int, **hello: int) -> socket.socket:
    """A raw client socket that sent its HELLO (blocking; read the answer with ``answer``)."""
    sock = socket.create_connection(("127.0.0.1", port))
    body = Hello(
        kind,
        session,
        stream_id,
        hello.get("window", 1 << 26),
        0,
        hello.get("max_frame", 1 << 20),
        hello.get("frames", 4096),
    )
    sock.sendall(encode_frame(Kind.HELLO, 0, body.encode()))
    return sock


async def answer(sock: socket.socket) -> int:
    """The kind of the listener's answer to a HELLO (WELCOME or REJECT)."""
    sock.settimeout(WAIT_S)
    raw = await asyncio.get_running_loop().run_in_executor(None, sock.recv, HEADER_SIZE)
    return decode_header(raw[:HEADER_SIZE], 4096).kind


@asynccontextmanager
async def stalled_and_rescuer() -> AsyncIterator[
    tuple[MultiStreamChannel, socket.socket, socket.socket]
]:
    """A listener-side channel (window_frames 16) and two raw client streams of its session:
    stream 0 plays a stalled stream, stream 1 the one its frames are rescued on."""
    async with served({"window_frames": 16, "resume_window_s": 0}) as (_, port, accepted):
        session = os.urandom(16)
        stalled = dial(port, HelloKind.NEW, session, 0, frames=16)
        socks = [stalled]
        try:
            # The JOIN only once the NEW was welcomed: the listener may take two HELLOs that
            # arrive together in either order, and a JOIN before its session is refused.
            assert await answer(stalled) == Kind.WELCOME
            socks.append(rescuer := dial(port, HelloKind.JOIN, session, 1, frames=16))
            assert await answer(rescuer) == Kind.WELCOME
            yield await asyncio.wait_for(accepted.get(), WAIT_S), stalled, rescuer
        finally:
            for sock in socks:
                sock.close()


@asynccontextmanager
async def callback_errors() -> AsyncIterator[list[BaseException]]:
    """Exceptions raised inside event-loop callbacks (normally only logged) while inside."""
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []
    previous = loop.get_exception_handler()

    def record(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        errors.append(exc if exc is not None else RuntimeError(context.get("message")))

    loop.set_exception_handler(record)
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


# -- r3: dispatch recursion ------------------------------------------------------------------


async def test_backlog_of_small_frames_drains_without_recursion() -> None:
    """r3: thousands of tiny frames queued behind a large one all arrive, in order.

    Handing each to a socket that took it at once re-entered dispatch once per frame, until
    a RecursionError in the writer callback lost the frames it had taken off the queue.
    """
    count = 5000
    received: list[bytes] = []
    done = asyncio.Event()

    async def handler(channel: MultiStreamChannel) -> None:
        for _ in range(count + 1):
            received.append(await channel.recv())
        done.set()

    settings = {**DATACENTER, "close_linger_s": 1}
    async with callback_errors() as errors, served(settings, handler) as (transport, port, _):
        channel = await transport.connect(Endpoint(host="127.0.0.1", port=port))
        try:
            big = os.urandom(4 << 20)
            await channel.send(big)  # still being written: the small ones queue behind it
            for i in range(count):
                await channel.send(b"%d" % i)
            async with asyncio.timeout(WAIT_S):
                while not done.is_set() and not errors:
                    await asyncio.sleep(0.01)
        finally:
            await channel.close()
    assert errors == []
    assert received == [big, *(b"%d" % i for i in range(count))]


# -- r7: a retired stream's queued frames ----------------------------------------------------


async def test_frames_queued_on_a_stream_the_peer_retires_are_resent() -> None:
    """r7: the receiver retires a stream while the sender still has a frame queued on it.

    The sender read STREAM_CLOSE and the EOF, dropped what it had not written yet and took
    the end as orderly, so those frames were never resent and the receiver stalled.
    """
    frames = [os.urandom(1 << 20) for _ in range(24)]

    async def handler(channel: MultiStreamChannel) -> None:
        for frame in frames:
            await channel.send(frame)

    settings = {**DATACENTER, "socket_buffer_bytes": 4096, "close_linger_s": 1}
    async with served(settings, handler) as (transport, port, accepted):
        endpoint = Endpoint(host="127.0.0.1", port=port, options={"streams": "2"})
        channel = await transport.connect(endpoint)
        try:
            server = await asyncio.wait_for(accepted.get(), WAIT_S)
            got = [await asyncio.wait_for(channel.recv(), WAIT_S)]
            async with asyncio.timeout(WAIT_S):  # a stream whose sender has a frame queued on it
                while not (busy := [s for s in server.streams.values() if s.out_bytes]):
                    got.append(await channel.recv())
            channel.retire(channel.streams[busy[0].stream_id])
            async with asyncio.timeout(WAIT_S):  # the bug: the rest never came
                while len(got) < len(frames):
                    got.append(await channel.recv())
        finally:
            await channel.close()
    assert got == frames
    assert server.streams_lost == 0


# -- r1: close() whose linger runs out ---------------------------------------------------------


@asynccontextmanager
async def stuck_peer(settings: dict[str, Any]) -> AsyncIterator[MultiStreamChannel]:
    """A listener-side channel whose raw client completed the handshake and reads no more."""
    async with served({"socket_buffer_bytes": 65536, **settings}) as (_, port, accepted):
        sock = dial(port, HelloKind.NEW, os.urandom(16), 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            assert await answer(sock) == Kind.WELCOME
            yield await asyncio.wait_for(accepted.get(), WAIT_S)
        finally:
            sock.close()


async def test_close_warns_when_the_linger_runs_out_with_frames_undelivered(caplog) -> None:
    """r1, sending side: close() said nothing although the peer never got the frames. It
    warns (it does not raise: it must not replace the error a caller closes the channel for)."""
    async with stuck_peer({"close_linger_s": 0.2}) as server:
        for _ in range(3):
            await server.send(os.urandom(1 << 20))
        await asyncio.wait_for(server.close(), WAIT_S)
        assert "3 of 3 frames not delivered" in caplog.text
        assert "close_linger_s" in caplog.text
        assert server.finished
        assert not server.streams


async def test_recv_fails_when_the_peer_closed_before_its_frames_arrived() -> None:
    """r1, receiving side: CLOSE(3) after frame 0, then the streams end: recv() raises."""
    async with served({"resume_window_s": 0}) as (_, port, accepted):
        sock = dial(port, HelloKind.NEW, os.urandom(16), 0)
        try:
            assert await answer(sock) == Kind.WELCOME
            server = await asyncio.wait_for(accepted.get(), WAIT_S)
            sock.sendall(encode_frame(Kind.DATA, 0, b"first"))
            sock.sendall(encode_frame(Kind.CLOSE, 3))
            sock.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(server.recv(), WAIT_S) == b"first"
            with pytest.raises(TransportError, match="2 of its 3 frames undelivered"):
                await asyncio.wait_for(server.recv(), WAIT_S)
        finally:
            sock.close()


async def test_receiver_does_not_hang_when_the_senders_linger_runs_out() -> None:
    """r1 end to end: a sender that gives up after 1 ms; the receiver ends with an error."""
    settings = {
        **DATACENTER,
        "close_linger_s": 0.001,
        "send_queue_bytes": 256 << 20,
        "window_bytes": 256 << 20,
    }
    ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(channel: MultiStreamChannel) -> None:
        try:
            while True:
                await channel.recv()
        except Exception as exc:  # the test looks at which one
            ended.set_result(exc)

    async with served(settings, handler) as (transport, port, _):
        channel = await transport.connect(Endpoint(host="127.0.0.1", port=port))
        try:
            frame = os.urandom(1 << 20)
            for _ in range(200):
                await channel.send(frame)
            await channel.close()  # warns that frames were not delivered (see the test above)
            failure = await asyncio.wait_for(ended, WAIT_S)
        finally:
            end_now(channel)
    assert isinstance(failure, TransportError)
    assert "undelivered" in str(failure)


# -- r6: close_linger_s=0 and a cancelled close() ---------------------------------------------


async def test_close_linger_zero_does_not_wait(caplog) -> None:
    """r6: close_linger_s=0 meant: wait forever for a peer that reads nothing."""
    async with stuck_peer({"close_linger_s": 0}) as server:
        for _ in range(3):
            await server.send(os.urandom(1 << 20))
        await asyncio.wait_for(server.close(), WAIT_S)  # the bug: forever
        assert "not delivered" in caplog.text
        assert server.finished
        assert not server.streams


async def test_cancelled_close_still_closes_every_stream() -> None:
    """r6: a close() cancelled while lingering left the channel half-closed, sockets open."""
    async with stuck_peer({"close_linger_s": 30}) as server:
        for _ in range(3):
            await server.send(os.urandom(1 << 20))
        streams = list(server.streams.values())
        with pytest.raises(TimeoutError):  # cancelled while it lingers (for 30 s)
            await asyncio.wait_for(server.close(), 0.2)
        assert server.finished
        assert not server.streams
        assert all(stream.sock.fileno() == -1 for stream in streams)
        await asyncio.wait_for(server.close(), WAIT_S)  # a second close() is a no-op


# -- r5: late originals of rescued frames -----------------------------------------------------


async def test_late_original_after_many_rescues_is_not_a_replay() -> None:
    """r5: originals of rescued frames 0..16 come late on stream A (window_frames 16).

    Once more than window_frames resends had arrived, the receiver forgot those below what
    was taken, and the late original of frame 0 killed the channel as a "replayed frame".
    """
    async with stalled_and_rescuer() as (server, stalled, rescuer):
        for seq in range(16):  # rescue copies of the stalled stream's frames
            rescuer.sendall(encode_frame(Kind.DATA, seq, b"f%d" % seq, FLAG_RETRANSMIT))
        for seq in range(16):
            assert await asyncio.wait_for(server.recv(), WAIT_S) == b"f%d" % seq
        rescuer.sendall(encode_frame(Kind.DATA, 16, b"f16", FLAG_RETRANSMIT))
        assert await asyncio.wait_for(server.recv(), WAIT_S) == b"f16"
        for seq in range(17):  # the stalled stream catches up: late originals
            stalled.sendall(encode_frame(Kind.DATA, seq, b"f%d" % seq))
        stalled.sendall(encode_frame(Kind.DATA, 17, b"f17"))
        assert await asyncio.wait_for(server.recv(), WAIT_S) == b"f17"


def test_resent_bookkeeping_still_catches_replays_and_is_bounded() -> None:
    """r5: only one late original per rescued frame is dropped; other old frames are replays."""
    rx = Reassembler(1 << 20, 16, 1024)
    for seq in range(40):  # more rescues than the bookkeeping keeps (2 * window_frames)
        assert rx.admit(seq, 1, retransmit=True)
        rx.add(seq, b"x")
        rx.take()
    assert not rx.admit(39, 1, retransmit=False)  # the late original: dropped silently
    with pytest.raises(FrameError, match="replayed frame"):
        rx.admit(39, 1, retransmit=False)  # a second copy is a replay
    with pytest.raises(FrameError, match="replayed frame"):
        rx.admit(7, 1, retransmit=False)  # beyond the 32 kept: forgotten, so a replay
    assert not rx.admit(8, 1, retransmit=False)  # the oldest one still kept


# -- r2: JOIN limits ---------------------------------------------------------------------------


async def test_listener_refuses_joins_beyond_max_streams() -> None:
    """r2: the listener attached every JOIN, whatever its max_streams."""
    async with served({"max_streams": 4}) as (_, port, accepted):
        session = os.urandom(16)
        socks = [dial(port, HelloKind.NEW, session, 0)]
        try:
            assert await answer(socks[0]) == Kind.WELCOME
            server = await asyncio.wait_for(accepted.get(), WAIT_S)
            for stream_id in range(1, 4):
                socks.append(dial(port, HelloKind.JOIN, session, stream_id))
                assert await answer(socks[-1]) == Kind.WELCOME
            socks.append(dial(port, HelloKind.JOIN, session, 4))
            assert await answer(socks[-1]) == Kind.REJECT
            assert b"max_streams=4" in socks[-1].recv(600)
            assert sorted(server.streams) == [0, 1, 2, 3]
        finally:
            for sock in socks:
                sock.close()


async def test_listener_refuses_a_duplicate_stream_id_and_leaks_no_socket() -> None:
    """r2: a JOIN reusing stream id 0 replaced the first stream, whose socket stayed open."""
    async with served({"close_linger_s": 0.2}) as (_, port, accepted):
        session = os.urandom(16)
        first = dial(port, HelloKind.NEW, session, 0)
        socks = [first]
        try:
            assert await answer(first) == Kind.WELCOME
            server = await asyncio.wait_for(accepted.get(), WAIT_S)
            socks.append(duplicate := dial(port, HelloKind.JOIN, session, 0))
            assert await answer(duplicate) == Kind.REJECT
            assert b"already attached" in duplicate.recv(600)
            await server.close()
            first.settimeout(WAIT_S)  # the server's close() must end the first stream: EOF
            loop = asyncio.get_running_loop()
            while await loop.run_in_executor(None, first.recv, 4096):
                pass
        finally:
            for sock in socks:
                sock.close()


# -- r4: connect() cancelled while its extra streams open -------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_cancelled_connect_leaks_no_stream_and_ends_the_listeners_channel() -> None:
    """r4: cancelling connect() while its JOIN streams opened left the first stream open.

    Fault injector: a relay on loopback that forwards the first connection to the listener
    and holds every later one without answering (a path where new streams hang).
    """
    held: list[asyncio.StreamWriter] = []

    # The listener would keep a channel whose client went away for its resume window.
    async with served({"mode": "datacenter", "resume_window_s": 60}) as (
        transport,
        port,
        accepted,
    ):

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = not held
            held.append(writer)
            if not first:
                return  # a JOIN: never answered
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
        try:
            endpoint = Endpoint(
                host="127.0.0.1",
                port=proxy.sockets[0].getsockname()[1],
                options={"streams": "4"},
            )
            connecting = asyncio.create_task(transport.connect(endpoint))
            try:
                # The first stream is up and its JOINs are opening (they hang): cancel now.
                await eventually(lambda: len(held) > 1, "connect() opens its extra streams")
            finally:
                connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            server = await asyncio.wait_for(accepted.get(), WAIT_S)
            with pytest.raises(TransportError):  # the listener's channel ends, no resume wait
                await asyncio.wait_for(server.recv(), 10)
            gc.collect()
            leaked = [
                obj
                for obj in gc.get_objects()
                if isinstance(obj, StreamConnection)
                and isinstance(obj._owner, MultiStreamChannel)
                and obj._owner.role == "client"
                and obj._owner.session_id == server.session_id
                and not obj.closed
            ]
            assert leaked == []
        finally:
            for writer in held:
                writer.close()
            proxy.close()


async def test_a_frame_header_alone_reserves_no_payload_memory() -> None:
    """A peer announces a 48 MiB frame and sends 10 bytes of it: the stream used to allocate
    the announced length from the header alone (memory a peer could claim for nothing). The
    body buffer now grows with the bytes received; the frame still arrives whole when sent."""
    async with served(DATACENTER) as (_, port, accepted):
        sock = dial(port, HelloKind.NEW, os.urandom(16), 0)
        try:
            assert await answer(sock) == Kind.WELCOME
            server = await asyncio.wait_for(accepted.get(), WAIT_S)
            payload = os.urandom(48 << 20)
            frame = encode_frame(Kind.DATA, 0, payload)
            sock.sendall(frame[: HEADER_SIZE + 10])
            (stream,) = server.streams.values()
            await eventually(lambda: stream._body is not None, "the frame's body is received")
            assert len(stream._body_buffer) <= 2 << 20  # not the announced 48 MiB
            await asyncio.get_running_loop().run_in_executor(
                None, sock.sendall, frame[HEADER_SIZE + 10 :]
            )
            assert await asyncio.wait_for(server.recv(), WAIT_S) == payload
        finally:
            sock.close()


# -- r8: a stream lost while close() lingers; late originals after many rescues --------------


@pytest.mark.parametrize("kill", [True, False], ids=["stream-reset", "control"])
async def test_stream_lost_while_close_lingers_has_its_frames_resent(kill: bool, caplog) -> None:
    """r8: a stream reset while close() waited for the peer to receive everything.

    on_stream_lost returned early while closing, so that stream's frames were never resent:
    the linger ran out and the receiver lost them although the other stream was healthy.
    """
    frames = [os.urandom(1 << 20) for _ in range(30)]
    got: list[bytes] = []
    ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(channel: MultiStreamChannel) -> None:
        try:
            while True:
                got.append(await channel.recv())
                await asyncio.sleep(0.005)  # a slowish reader: frames stay unacknowledged
        except Exception as exc:  # the test looks at which one
            ended.set_result(exc)

    # The bug let the linger run out (a warning, frames lost): make that 30 s, far beyond
    # the delivery it waits for.
    settings = {**DATACENTER, "socket_buffer_bytes": 65536, "close_linger_s": 30}
    async with served(settings, handler) as (transport, port, _):
        endpoint = Endpoint(host="127.0.0.1", port=port, options={"streams": "2"})
        channel = await transport.connect(endpoint)
        assert isinstance(channel, MultiStreamChannel)
        try:
            for frame in frames:
                await channel.send(frame)
            closing = asyncio.ensure_future(channel.close())
            await asyncio.sleep(0)  # close() is lingering now
            assert channel._closing  # and CLOSE is not queued yet
            if kill:
                window = channel._window
                victim = max(  # the stream with most frames the peer has not received yet
                    channel.streams.values(),
                    key=lambda s: sum(
                        p.seq >= window.peer_received for p in window.on_stream(s.stream_id)
                    ),
                )
                assert any(
                    p.seq >= window.peer_received for p in window.on_stream(victim.stream_id)
                )
                victim.abort()
            await asyncio.wait_for(closing, WAIT_S)  # well within the linger
            failure = await asyncio.wait_for(ended, WAIT_S)
        finally:
            end_now(channel)
    assert len(got) == len(frames)
    assert got == frames
    assert isinstance(failure, TransportError)
    assert "every frame it sent was received" in str(failure)
    assert "not delivered" not in caplog.text
    assert channel.streams_lost == (1 if kill else 0)


async def test_all_streams_lost_while_close_lingers_starts_no_resume() -> None:
    """r8: resending during close()'s linger must not start the resume machinery."""
    # The bug waited for the linger or a resume: both far longer than the close() it allows.
    settings = {**DATACENTER, "resume_window_s": 60, "close_linger_s": 60}
    async with served(settings) as (transport, port, accepted):
        channel = await transport.connect(Endpoint(host="127.0.0.1", port=port))
        assert isinstance(channel, MultiStreamChannel)
        try:
            await asyncio.wait_for(accepted.get(), WAIT_S)  # it never reads: frames stay
            resumed: list[bool] = []
            channel.on_connection_lost = lambda: resumed.append(True)
            for _ in range(8):
                await channel.send(os.urandom(1 << 20))
            closing = asyncio.ensure_future(channel.close())
            await asyncio.sleep(0)
            channel.ex_kill_all_streams()
            await asyncio.wait_for(closing, 10)  # no stream left: close() ends at once
        finally:
            end_now(channel)
    assert resumed == []
    assert channel.finished
    assert channel.resumes == 0


def test_late_original_is_told_from_a_replay_per_stream() -> None:
    """r8: originals arrive in increasing order on each stream, whatever was rescued.

    The former FIFO of resent numbers (2 x window_frames) forgot the oldest, so a late
    original after many rescues was a "replayed frame"; the per-stream mark is exact.
    """
    rx = Reassembler(1 << 20, 16, 1024)
    for seq in range(100):  # rescue copies on stream 1, far more than 2 * window_frames
        assert rx.admit(seq, 1, retransmit=True, stream_id=1)
        rx.add(seq, b"x")
        rx.take()
    for seq in range(100):  # the stalled stream 0 catches up: late originals, all dropped
        assert not rx.admit(seq, 1, retransmit=False, stream_id=0)
    with pytest.raises(FrameError, match="replayed frame"):
        rx.admit(50, 1, retransmit=False, stream_id=0)  # again on the same stream: a replay
    assert rx.admit(100, 1, retransmit=False, stream_id=0)  # and new frames still come
    rx.forget_stream(0)  # a new connection took stream id 0 (a resume): a fresh start
    assert not rx.admit(99, 1, retransmit=False, stream_id=0)
    assert len(rx._last_original) == 1  # one mark per stream, nothing per frame


async def test_late_originals_after_more_than_2w_rescues_are_not_replays() -> None:
    """r8: 48 rescue copies (3 x window_frames 16), then the stalled stream's originals.

    The FIFO of resent numbers kept only 2 x window_frames, so the late original of frame 0
    was taken for a replay and the healthy channel died with FrameError.
    """
    async with stalled_and_rescuer() as (server, stalled, rescuer):
        for start in range(0, 48, 16):  # rescue copies, a window at a time
            for seq in range(start, start + 16):
                rescuer.sendall(encode_frame(Kind.DATA, seq, b"f%d" % seq, FLAG_RETRANSMIT))
            for seq in range(start, start + 16):
                assert await asyncio.wait_for(server.recv(), WAIT_S) == b"f%d" % seq
        for seq in range(49):  # the stalled stream catches up: 48 late originals, then new
            stalled.sendall(encode_frame(Kind.DATA, seq, b"f%d" % seq))
        assert await asyncio.wait_for(server.recv(), WAIT_S) == b"f48"
        stalled.sendall(encode_frame(Kind.DATA, 20, b"f20"))  # a real replay still fails
        with pytest.raises(FrameError, match="replayed frame: seq 20"):
            await asyncio.wait_for(server.recv(), WAIT_S)


async def test_stalled_stream_catching_up_after_many_rescues_keeps_the_channel() -> None:
    """r8 end to end: stream 0's path stalls 0.8 s while small frames keep flowing.

    The sender keeps rescuing the frames it gave stream 0 on the others, so the receiver
    saw more than 2 x window_frames resends before those originals came, and the first late
    one killed the channel ("replayed frame"). Fault injector: a loopback relay that holds
    back what the client sends on its first stream for 0.8 s.
    """
    flowing = asyncio.Event()
    relayed: list[asyncio.StreamWriter] = []
    got: list[bytes] = []
    ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if gate is not None:
                    await gate.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handler(channel: MultiStreamChannel) -> None:
        try:
            while True:
                got.append(await channel.recv())
        except Exception as exc:  # the test looks at which one
            ended.set_result(exc)

    settings = {**DATACENTER, "window_frames": 16, "stall_min_s": 0.02}
    async with served(settings, handler) as (transport, port, _):

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = not relayed
            relayed.append(writer)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.gather(
                pipe(reader, up_writer, flowing if first else None), pipe(up_reader, writer, None)
            )

        flowing.set()
        proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
        try:
            endpoint = Endpoint(
                host="127.0.0.1",
                port=proxy.sockets[0].getsockname()[1],
                options={"streams": "3"},
            )
            channel = await transport.connect(endpoint)
            try:
                frames = [b"frame %d" % i for i in range(3000)]
                flowing.clear()  # stream 0's path stalls ...
                asyncio.get_running_loop().call_later(0.8, flowing.set)  # ... and recovers
                async with asyncio.timeout(WAIT_S):
                    for frame in frames:
                        await channel.send(frame)
                    while len(got) < len(frames) and not ended.done():
                        await asyncio.sleep(0.01)
                await channel.close()
            finally:
                end_now(channel)
        finally:
            for writer in relayed:
                writer.close()
            proxy.close()
    assert not ended.done() or not isinstance(ended.result(), FrameError), ended.result()
    assert got == frames
