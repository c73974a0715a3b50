"""Opening one TCP stream of a channel: connect, tune, HELLO, and WELCOME or REJECT.

A HELLO says whether the stream starts a new session, joins one (to add a stream) or resumes
one after the whole connection was lost, in which case it carries the sender's next expected
sequence number so the peer resends exactly what is missing.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from novacron_dwcp.transport.congestion import tune_socket
from novacron_dwcp.transport.wire import (
    HEADER_SIZE,
    MAX_CONTROL_PAYLOAD,
    Header,
    Hello,
    Kind,
    decode_header,
    encode_frame,
)
from novacron_sdk.errors import FrameError, TransportError


class StreamRefusedError(TransportError):
    """The listener answered REJECT (unknown or expired session, or a closed channel)."""


async def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    loop = asyncio.get_running_loop()
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = await loop.sock_recv_into(sock, view[got:])
        if not n:
            msg = f"connection closed during the handshake ({got} of {size} bytes read)"
            raise TransportError(msg)
        got += n
    return buf


async def read_control_frame(sock: socket.socket) -> tuple[Header, bytes]:
    """Read one control frame (bounded size) from a blocking-free socket."""
    raw = await _recv_exact(sock, HEADER_SIZE)
    header = decode_header(raw, MAX_CONTROL_PAYLOAD)
    payload = bytes(await _recv_exact(sock, header.length)) if header.length else b""
    header.check_payload(payload)
    return header, payload


async def send_frame(sock: socket.socket, frame: bytes) -> None:
    """Write a whole frame."""
    await asyncio.get_running_loop().sock_sendall(sock, frame)


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """A connected, tuned socket whose HELLO was welcomed."""

    sock: socket.socket
    welcome: Hello
    rtt_s: float
    congestion: str


async def open_stream(
    host: str,
    port: int,
    hello: Hello,
    *,
    timeout: float,
    congestion: str,
    buffer_bytes: int | None,
    notsent_lowat: int | None = None,
) -> OpenedStream:
    """Connect to ``host:port`` and do the handshake; TransportError on refusal or timeout."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        msg = f"cannot resolve {host!r}: {exc}"
        raise TransportError(msg) from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        # Buffers must be set before connect() so the window scale is negotiated for them.
        used = tune_socket(sock, congestion, buffer_bytes, notsent_lowat)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, address)
            started = time.perf_counter()
            await send_frame(sock, encode_frame(Kind.HELLO, 0, hello.encode()))
            header, body = await read_control_frame(sock)
        rtt = time.perf_counter() - started
    except TimeoutError as exc:
        sock.close()
        msg = f"no DWCP handshake with {host}:{port} within {timeout} s; is a dwcp listener there?"
        raise TransportError(msg) from exc
    except OSError as exc:
        sock.close()
        msg = f"cannot connect to {host}:{port}: {exc}"
        raise TransportError(msg) from exc
    except BaseException:
        sock.close()
        raise
    if header.kind == Kind.REJECT:
        sock.close()
        msg = f"{host}:{port} refused the stream: {body.decode(errors='replace')}"
        raise StreamRefusedError(msg)
    if header.kind != Kind.WELCOME:
        sock.close()
        msg = f"expected WELCOME from {host}:{port}, got frame kind {header.kind}"
        raise FrameError(msg)
    return OpenedStream(sock, Hello.decode(body), rtt, used)
