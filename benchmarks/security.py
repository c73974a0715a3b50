"""Security costs: hybrid handshake CPU time against X25519 alone; sealed against plain throughput.

Handshake figures use ``time.process_time`` over many in-process runs of both sides:

- key exchange: X25519 + ML-KEM-768 + the HKDF combiner, against X25519 + HKDF (target <= 2x);
- full handshake: the ``pqc`` provider's real 4-message handshake (hybrid KEM, Ed25519 +
  ML-DSA-65 signatures, both sides) over an in-memory channel, against the cryptography a
  classical handshake of that shape does (X25519 both sides, one Ed25519 signature and one
  verification each way). Reported without a target: ML-DSA-65 signing dominates it.

Throughput sends frames over the builtin TCP transport on loopback between two child
processes (each end seals or opens on its own core, as two hosts would), sealed through
``SecureChannel`` against the bare channel (target >= 0.85x), once with glibc's default
malloc and once with its trim and mmap thresholds raised (see MALLOC_TUNED). The CPU seconds
both ends spend per GiB are reported too: on a busy machine they are steadier than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, median, parse_args, report
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from novacron_pqc import kem
from novacron_pqc.http_auth import FrameQueueChannel
from novacron_pqc.identity import EnrolledKeys, NodeIdentity
from novacron_pqc.provider import PqcSecurityProvider
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.security.channel import secure_channel
from novacron_sdk.transport.interface import Channel, Endpoint

TH = hashlib.sha384(b"transcript").digest()


def cpu_per_op(fn: Any, count: int) -> float:
    """CPU seconds per call of ``fn`` (median of 5 batches)."""
    batches = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(count):
            fn()
        batches.append((time.process_time() - started) / count)
    return median(batches)


def x25519_exchange() -> None:
    """Both sides of an ephemeral X25519 exchange, then the same HKDF as the hybrid.

    Public keys go through bytes and back, as they do on the wire and in the hybrid.
    """
    a, b = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    a_pub = x25519.X25519PublicKey.from_public_bytes(a.public_key().public_bytes_raw())
    b_pub = x25519.X25519PublicKey.from_public_bytes(b.public_key().public_bytes_raw())
    secret = a.exchange(b_pub)
    b.exchange(a_pub)
    kem.combine(secret, bytes(32), TH)  # same KDF work; the second input is a placeholder


def hybrid_exchange() -> None:
    """Both sides of the hybrid exchange, with its combiner."""
    initiator = kem.KemInitiator()
    reply, x_secret, pq_secret = kem.respond(kem.KemOffer.decode(initiator.offer.encode()))
    initiator.finish(kem.KemReply.decode(reply.encode()))
    kem.combine(x_secret, pq_secret, TH)


def classical_handshake_work(sign_a: Any, sign_b: Any) -> None:
    """The classical protocol's crypto: X25519 both sides, Ed25519 sign and verify each way."""
    x25519_exchange()
    for key in (sign_a, sign_b):
        signature = key.sign(TH)
        key.public_key().verify(signature, TH)
    hashlib.sha384(TH).digest()


async def provider_handshakes(count: int) -> float:
    """CPU seconds per full ``pqc`` handshake (both sides) over an in-memory channel."""
    with tempfile.TemporaryDirectory() as tmp:
        a, b = NodeIdentity.generate("a"), NodeIdentity.generate("b")
        ea, eb = EnrolledKeys(Path(tmp) / "a"), EnrolledKeys(Path(tmp) / "b")
        ea.enroll(b.public)
        eb.enroll(a.public)
        pa = PqcSecurityProvider({"identity": a, "enrolled": ea})
        pb = PqcSecurityProvider({"identity": b, "enrolled": eb})
        started = time.process_time()
        for _ in range(count):
            left, right = FrameQueueChannel.pair()
            await asyncio.gather(
                pa.handshake(left, role="initiator"), pb.handshake(right, role="responder")
            )
        return (time.process_time() - started) / count


def _receiver(port_queue: Any, sealed: bool, key_dir: str, total: int) -> None:
    asyncio.run(_receive(port_queue, sealed, key_dir, total))


async def _receive(queue: Any, sealed: bool, key_dir: str, total: int) -> None:
    plugins = build_plugin_manager(autoload=False)
    done = asyncio.Event()

    async def serve(channel: Channel) -> None:
        if sealed:
            provider = PqcSecurityProvider(
                {
                    "identity": NodeIdentity.load(Path(key_dir) / "b.key"),
                    "enrolled": EnrolledKeys(Path(key_dir) / "b-enrolled"),
                }
            )
            channel = await secure_channel(plugins, channel, "responder", provider)
        got = 0
        started = time.process_time()
        while got < total:
            got += len(await channel.recv())
        queue.put(time.process_time() - started)
        await channel.send(b"done")
        await channel.drain()
        done.set()

    listener = await TcpTransport().listen(Endpoint(), serve)
    queue.put(listener.endpoint.port)
    await done.wait()
    await asyncio.sleep(0.2)
    await listener.close()


async def _send(
    port: int, sealed: bool, key_dir: str, frame: bytes, count: int
) -> tuple[float, float]:
    channel: Channel = await TcpTransport().connect(Endpoint(port=port))
    if sealed:
        provider = PqcSecurityProvider(
            {
                "identity": NodeIdentity.load(Path(key_dir) / "a.key"),
                "enrolled": EnrolledKeys(Path(key_dir) / "a-enrolled"),
            }
        )
        channel = await secure_channel(
            build_plugin_manager(autoload=False), channel, "initiator", provider
        )
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        await channel.send(frame)
    assert await channel.recv() == b"done"
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await channel.close()
    return len(frame) * count / elapsed, cpu


def _sender(
    queue: Any, port: int, sealed: bool, key_dir: str, frame_bytes: int, count: int
) -> None:
    queue.put(asyncio.run(_send(port, sealed, key_dir, os.urandom(frame_bytes), count)))


# glibc gives the top of the heap back to the kernel when more than M_TRIM_THRESHOLD is free
# there. A sealed frame and its plaintext (two frame-sized blocks freed together) cross that
# line on every frame, so each frame pays page faults; these settings keep the memory.
MALLOC_TUNED = {"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_MMAP_THRESHOLD_": str(64 << 20)}


def throughput(
    sealed: bool, key_dir: str, frame_bytes: int, total_bytes: int, env: dict[str, str]
) -> tuple[float, float]:
    """Bytes/s between two child processes over loopback TCP, and their CPU s/GiB together.

    Both ends are fresh processes started with ``env`` added to the environment (glibc reads
    its malloc settings at start-up).
    """
    count = max(1, total_bytes // frame_bytes)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        receiver = ctx.Process(
            target=_receiver, args=(queue, sealed, key_dir, count * frame_bytes), daemon=True
        )
        receiver.start()
        port = queue.get(timeout=30)
        sender = ctx.Process(
            target=_sender, args=(queue, port, sealed, key_dir, frame_bytes, count), daemon=True
        )
        sender.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        results = [queue.get(timeout=120), queue.get(timeout=120)]
    finally:
        sender.join(30)
        receiver.join(30)
    sent = next(r for r in results if isinstance(r, tuple))
    receiver_cpu = next(r for r in results if not isinstance(r, tuple))
    rate, sender_cpu = sent
    return rate, (sender_cpu + receiver_cpu) * 2**30 / (count * frame_bytes)


def throughput_figures(
    runs: dict[tuple[str, bool], list[tuple[float, float]]], frame_kib: int
) -> list[Figure]:
    """Sealed against unsealed throughput and CPU, per malloc setting."""
    figures = []
    for malloc in ("default", "tuned"):
        plain, sealed = runs[(malloc, False)], runs[(malloc, True)]
        plain_rate, sealed_rate = median([r[0] for r in plain]), median([r[0] for r in sealed])
        figures += [
            Figure(
                f"sealed throughput, {frame_kib} KiB frames, {malloc} malloc",
                sealed_rate / 1e6,
                "MB/s",
                f"unsealed tcp, {malloc} malloc",
                plain_rate / 1e6,
                target=">= 0.85x",
                met=sealed_rate >= 0.85 * plain_rate,
                samples=[r[0] / 1e6 for r in sealed],
            ),
            Figure(
                f"CPU per GiB, both ends, sealed, {malloc} malloc",
                median([r[1] for r in sealed]),
                "s/GiB",
                f"unsealed tcp, {malloc} malloc",
                median([r[1] for r in plain]),
                samples=[r[1] for r in sealed],
            ),
        ]
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the security benchmark."""

    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--frame-kib", type=int, default=1024, help="frame size (KiB)")

    args = parse_args(__doc__ or "", argv, extra)
    ops = 300 if args.quick else 2000
    full = 30 if args.quick else 200
    x_cpu = cpu_per_op(x25519_exchange, ops)
    h_cpu = cpu_per_op(hybrid_exchange, ops)
    sign_a, sign_b = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    c_full = cpu_per_op(lambda: classical_handshake_work(sign_a, sign_b), ops)
    p_full = median([asyncio.run(provider_handshakes(full)) for _ in range(3)])

    frame = args.frame_kib * 1024
    total = (256 if args.quick else 2048) * 1024 * 1024
    rounds = 2 if args.quick else 3
    with tempfile.TemporaryDirectory() as key_dir:
        a, b = NodeIdentity.generate("a"), NodeIdentity.generate("b")
        a.save(Path(key_dir) / "a.key")
        b.save(Path(key_dir) / "b.key")
        EnrolledKeys(Path(key_dir) / "a-enrolled").enroll(b.public)
        EnrolledKeys(Path(key_dir) / "b-enrolled").enroll(a.public)
        runs: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for _ in range(rounds):  # interleaved so drift hits every variant alike
            for malloc, env in (("default", {}), ("tuned", MALLOC_TUNED)):
                for sealed in (False, True):
                    result = throughput(sealed, key_dir, frame, total, env)
                    runs.setdefault((malloc, sealed), []).append(result)

    figures = [
        Figure(
            "key exchange CPU (both sides)",
            h_cpu * 1e6,
            "us",
            "X25519 + HKDF",
            x_cpu * 1e6,
            target="<= 2x",
            met=h_cpu <= 2 * x_cpu,
        ),
        Figure(
            "full handshake CPU (both sides, pqc provider)",
            p_full * 1e6,
            "us",
            "X25519 + Ed25519 crypto only",
            c_full * 1e6,
        ),
        *throughput_figures(runs, args.frame_kib),
    ]
    return report("security", "Security: handshake and sealing costs", args, figures)


if __name__ == "__main__":
    raise SystemExit(main())
