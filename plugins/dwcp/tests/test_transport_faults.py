"""Stream deaths, whole-connection losses and resumption: every byte verified by hash."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable

import pytest

from novacron_dwcp.transport.channel import MultiStreamChannel
from novacron_dwcp.transport.multistream import MultiStreamTransport
from novacron_sdk.errors import TransportError
from novacron_sdk.testing.waiting import eventually
from novacron_sdk.transport.interface import Channel, Endpoint

TOTAL = 48 * 1024 * 1024


def _frames(seed: int, total: int = TOTAL) -> list[bytes]:
    rng = random.Random(seed)
    frames, size = [], 0
    while size < total:
        frame = rng.randbytes(rng.choice((1, 900, 64 * 1024, 300_000, 1 << 20)))
        frames.append(frame)
        size += len(frame)
    return frames


class Receiver:
    """Listener handler that hashes every frame until the peer closes."""

    def __init__(self) -> None:
        self.channel: asyncio.Future[Channel] | None = None
        self.done: asyncio.Future[tuple[int, str, BaseException]] | None = None
        self.progress = 0

    async def __call__(self, channel: Channel) -> None:
        assert self.channel is not None
        assert self.done is not None
        self.channel.set_result(channel)
        digest, count = hashlib.sha256(), 0
        try:
            while True:
                frame = await channel.recv()
                digest.update(frame)
                count += 1
                self.progress += len(frame)
        except TransportError as exc:
            self.done.set_result((count, digest.hexdigest(), exc))
        finally:
            await channel.close()


async def _transfer(
    settings: dict[str, object],
    relay_factory: Callable[[int], Awaitable[object]],
    fault: Callable[[object, MultiStreamChannel, Receiver], Awaitable[None]],
) -> tuple[MultiStreamChannel, list[bytes], tuple[int, str, BaseException], int]:
    transport = MultiStreamTransport(settings)
    loop = asyncio.get_running_loop()
    receiver = Receiver()
    receiver.channel, receiver.done = loop.create_future(), loop.create_future()
    listener = await transport.listen(Endpoint(host="127.0.0.1"), receiver)
    channels: list[Channel] = []
    sender: asyncio.Task[None] | None = None
    try:
        relay = await relay_factory(listener.endpoint.port)
        frames = _frames(seed=7)
        channel = await transport.connect(Endpoint(host="127.0.0.1", port=relay.port))  # type: ignore[attr-defined]
        assert isinstance(channel, MultiStreamChannel)
        channels.append(channel)

        async def send_all() -> None:
            for frame in frames:
                await channel.send(frame)
            await channel.drain()

        sender = asyncio.create_task(send_all())
        await fault(relay, channel, receiver)
        await asyncio.wait_for(sender, timeout=60)
        await channel.close()
        result = await asyncio.wait_for(receiver.done, timeout=60)
        accepted = relay.accepted  # type: ignore[attr-defined]
    finally:
        await listener.close()
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        served = receiver.channel
        if served is not None and served.done() and not served.cancelled():
            channels.append(served.result())
        _end(*channels)
    return channel, frames, result, accepted


def _end(*channels: Channel) -> None:
    """Close what a test is done with at once, also when it failed half-way."""
    for channel in channels:
        if isinstance(channel, MultiStreamChannel) and not channel.finished:
            channel.fail(TransportError("the test is over"))


async def _wait_progress(receiver: Receiver, fraction: float) -> None:
    await eventually(
        lambda: receiver.progress >= TOTAL * fraction,
        f"{fraction:.0%} of the transfer received",
        within_s=60,
        every_s=0.005,
    )


def _expected(frames: list[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(frame)
    return len(frames), digest.hexdigest()


STRIPED = {"mode": "internet", "initial_streams": 4, "adapt": False, "window_bytes": 8 << 20}


async def test_one_stream_reset_mid_transfer_loses_and_duplicates_nothing(
    transport_relay: Callable[[int], Awaitable[object]],
) -> None:
    async def fault(relay: object, channel: MultiStreamChannel, receiver: Receiver) -> None:
        await _wait_progress(receiver, 0.3)
        relay.cut(1)  # type: ignore[attr-defined]

    channel, frames, (count, digest, end), _ = await _transfer(STRIPED, transport_relay, fault)
    assert (count, digest) == _expected(frames)
    assert "peer closed" in str(end)
    assert channel.streams_lost == 1


async def test_stream_killed_locally_is_resent_on_the_others(
    transport_relay: Callable[[int], Awaitable[object]],
) -> None:
    async def fault(relay: object, channel: MultiStreamChannel, receiver: Receiver) -> None:
        await _wait_progress(receiver, 0.2)
        channel.ex_kill_stream(0)
        await _wait_progress(receiver, 0.5)
        channel.ex_kill_stream(1)

    channel, frames, (count, digest, _), _ = await _transfer(STRIPED, transport_relay, fault)
    assert (count, digest) == _expected(frames)
    assert channel.streams_lost == 2


async def test_whole_connection_loss_inside_the_window_is_resumed(
    transport_relay: Callable[[int], Awaitable[object]],
) -> None:
    async def fault(relay: object, channel: MultiStreamChannel, receiver: Receiver) -> None:
        await _wait_progress(receiver, 0.3)
        relay.cut_all()  # type: ignore[attr-defined]
        await _wait_progress(receiver, 0.6)
        relay.cut_all()  # type: ignore[attr-defined]

    settings = {**STRIPED, "resume_window_s": 30.0}
    channel, frames, (count, digest, _), accepted = await _transfer(
        settings, transport_relay, fault
    )
    assert (count, digest) == _expected(frames)
    assert channel.resumes == 2
    assert accepted >= 4 + 2 * 4  # both times the client reopened all four streams


async def test_connection_loss_beyond_the_window_fails_cleanly(
    transport_relay: Callable[[int], Awaitable[object]],
) -> None:
    transport = MultiStreamTransport({**STRIPED, "resume_window_s": 0.5})
    received: list[bytes] = []

    async def handler(channel: Channel) -> None:
        try:
            while True:
                received.append(await channel.recv())
        except TransportError:
            pass

    listener = await transport.listen(Endpoint(host="127.0.0.1"), handler)
    try:
        relay = await transport_relay(listener.endpoint.port)
        channel = await transport.connect(Endpoint(host="127.0.0.1", port=relay.port))  # type: ignore[attr-defined]
        try:
            await channel.send(b"before")
            await eventually(lambda: bool(received), "the first frame arrives")
            await listener.close()
            relay._server.close()  # type: ignore[attr-defined]  # nobody to reconnect to
            relay.cut_all()  # type: ignore[attr-defined]

            async def keep_sending() -> None:
                for _ in range(1000):
                    await asyncio.wait_for(channel.send(b"x" * 65536), timeout=20)

            with pytest.raises(TransportError, match="resume window"):
                await keep_sending()
        finally:
            await channel.close()
    finally:
        await listener.close()
    assert received[:1] == [b"before"]


async def test_streams_retired_by_adaptation_lose_nothing() -> None:
    transport = MultiStreamTransport({**STRIPED, "initial_streams": 6})
    loop = asyncio.get_running_loop()
    receiver = Receiver()
    receiver.channel, receiver.done = loop.create_future(), loop.create_future()
    listener = await transport.listen(Endpoint(host="127.0.0.1"), receiver)
    frames = _frames(seed=11, total=16 << 20)
    try:
        channel = await transport.connect(listener.endpoint)
        assert isinstance(channel, MultiStreamChannel)
        try:
            for i, frame in enumerate(frames):
                await channel.send(frame)
                if i % 10 == 5 and len(channel.live_streams()) > 1:
                    channel.retire(channel.live_streams()[-1])
            await channel.drain()
            await channel.close()
            count, digest, _ = await asyncio.wait_for(receiver.done, timeout=30)
        finally:
            _end(channel)
    finally:
        await listener.close()
    assert (count, digest) == _expected(frames)
    assert channel.streams_lost == 0
