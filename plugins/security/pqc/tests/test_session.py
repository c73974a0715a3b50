"""Sealed frames: tampering, replay, reordering, wrong keys and key rotation."""

from __future__ import annotations

import os

import pytest

from novacron_pqc.session import HEADER_BYTES, OVERHEAD_BYTES, AeadSession
from novacron_sdk.errors import SecurityError


def sessions(
    aead: str = "aes-256-gcm",
    *,
    rotate_bytes: int = 1 << 40,
    rotate_seconds: float = 0.0,
    receiver_budget: int | None = None,
) -> tuple[AeadSession, AeadSession]:
    i2r, r2i, exporter = os.urandom(48), os.urandom(48), os.urandom(48)
    common = {"aead": aead, "exporter_secret": exporter, "rotate_seconds": rotate_seconds}
    a = AeadSession(
        peer_id="b",
        peer_fingerprint="fb",
        send_secret=i2r,
        recv_secret=r2i,
        rotate_bytes=rotate_bytes,
        **common,
    )
    b = AeadSession(
        peer_id="a",
        peer_fingerprint="fa",
        send_secret=r2i,
        recv_secret=i2r,
        rotate_bytes=receiver_budget or rotate_bytes,
        **common,
    )
    return a, b


@pytest.mark.parametrize("aead", ["aes-256-gcm", "chacha20-poly1305"])
def test_round_trip_both_ways(aead: str) -> None:
    a, b = sessions(aead)
    for size in (0, 1, 4096, 1 << 20):
        frame = os.urandom(size)
        sealed = a.seal(frame)
        assert len(sealed) == size + HEADER_BYTES + 16
        # A 1-byte frame shows up in 30 random-looking bytes by chance one time in nine.
        assert size < 16 or frame not in bytes(sealed)
        assert b.open(bytes(sealed)) == frame
        assert a.open(bytes(b.seal(frame))) == frame


def test_tampered_frame_is_rejected() -> None:
    a, b = sessions()
    sealed = bytearray(a.seal(b"payload" * 10))
    sealed[HEADER_BYTES + 3] ^= 0x40
    with pytest.raises(SecurityError, match="failed authentication: it was altered"):
        b.open(bytes(sealed))


def test_tampered_header_is_rejected() -> None:
    a, b = sessions()
    a.seal(b"first")
    sealed = bytearray(a.seal(b"second"))
    sealed[12] = 0  # claim sequence 0 again: the header is authenticated data
    with pytest.raises(SecurityError, match="failed authentication"):
        b.open(bytes(sealed))


def test_replayed_frame_is_rejected() -> None:
    a, b = sessions()
    first = bytes(a.seal(b"one"))
    assert b.open(first) == b"one"
    with pytest.raises(SecurityError, match="replayed frame rejected: sequence 0"):
        b.open(first)
    assert b.open(bytes(a.seal(b"two"))) == b"two"  # a rejected replay does not derail


def test_reordered_frame_is_rejected() -> None:
    a, b = sessions()
    first, second = bytes(a.seal(b"one")), bytes(a.seal(b"two"))
    with pytest.raises(SecurityError, match="out of order"):
        b.open(second)
    assert b.open(first) == b"one"


def test_frame_from_another_session_is_rejected() -> None:
    a, _ = sessions()
    _, other = sessions()
    with pytest.raises(SecurityError, match="sealed with another key"):
        other.open(bytes(a.seal(b"hello")))


def test_garbage_is_rejected() -> None:
    _, b = sessions()
    with pytest.raises(SecurityError, match="too short"):
        b.open(b"\x01\x02")
    with pytest.raises(SecurityError, match="version"):
        b.open(b"\x09" + bytes(40))


def test_keys_rotate_by_bytes_in_step() -> None:
    a, b = sessions(rotate_bytes=1000)
    for _ in range(10):
        assert b.open(bytes(a.seal(os.urandom(400)))) is not None
    # 400 bytes a frame, budget 1000: a new key every third frame.
    assert a.send_epoch == b.recv_epoch == 3
    sealed_epoch_3 = bytes(a.seal(b"x"))
    assert int.from_bytes(sealed_epoch_3[1:5], "big") == 3
    b.open(sealed_epoch_3)


def test_keys_rotate_by_time() -> None:
    a, b = sessions(rotate_seconds=1e-9)  # every frame is past the budget
    for index in range(4):
        b.open(bytes(a.seal(b"tick")))
        assert b.recv_epoch == index
    assert a.send_epoch == 3


def test_old_epoch_frames_cannot_be_opened_after_rotation() -> None:
    a, b = sessions(rotate_bytes=10)
    old = bytes(a.seal(b"0123456789"))
    b.open(old)
    b.open(bytes(a.seal(b"next")))
    assert b.recv_epoch == 1
    with pytest.raises(SecurityError, match="replayed"):
        b.open(old)


def test_sender_ignoring_the_budget_is_refused() -> None:
    a, b = sessions(rotate_bytes=1 << 30, receiver_budget=100)
    b.open(bytes(a.seal(bytes(100))))
    with pytest.raises(SecurityError, match="beyond the agreed budget"):
        b.open(bytes(a.seal(bytes(10))))


def test_exported_keys_match_and_differ_by_label() -> None:
    a, b = sessions()
    assert a.export("http request") == b.export("http request")
    assert a.export("http request") != a.export("http response")
    assert "secret" not in repr(a)


def test_recycled_seal_buffers_never_overwrite_a_frame_still_held() -> None:
    """Large frames are sealed into recycled buffers, but only into ones nobody holds."""
    a, b = sessions()
    frames = [os.urandom(200_000) for _ in range(8)]
    held = [a.seal(frame) for frame in frames]  # every sealed frame kept, as a queue would
    snapshots = [bytes(sealed) for sealed in held]
    assert len({id(sealed) for sealed in held}) == len(held)
    assert [bytes(sealed) for sealed in held] == snapshots
    assert [b.open(sealed) for sealed in held] == frames


def test_a_released_seal_buffer_is_reused() -> None:
    a, b = sessions()
    first = a.seal(os.urandom(100_000))
    first_id = id(first)
    assert b.open(first)
    del first
    second = a.seal(frame := os.urandom(100_000))
    assert id(second) == first_id  # the buffer came back from the pool
    assert b.open(second) == frame


def test_the_seal_pool_is_bounded_in_bytes_and_covers_a_resend_window() -> None:
    """A transport holding many frames (DWCP until acknowledged) gets them recycled, within
    the byte budget: memory kept per session is bounded."""
    from novacron_pqc import session as session_module

    a, _ = sessions()
    size = 1024 * 1024
    held = [a.seal(os.urandom(size)) for _ in range(40)]
    pooled = {id(frame) for frame in held[:16]}
    kept = sum(map(len, a._seal_pool))
    assert kept <= session_module._SEAL_POOL_BYTES
    assert len(a._seal_pool) == session_module._SEAL_POOL_BYTES // (size + OVERHEAD_BYTES)
    del held
    again = [a.seal(os.urandom(size)) for _ in range(len(a._seal_pool))]
    assert {id(frame) for frame in again} <= pooled


def test_a_view_keeps_its_buffer_out_of_the_pool() -> None:
    a, b = sessions()
    sealed = a.seal(os.urandom(100_000))
    view = memoryview(sealed)[HEADER_BYTES:]  # as a transport's write queue holds it
    copy = bytes(sealed)
    del sealed
    a.seal(os.urandom(100_000))
    assert bytes(view) == copy[HEADER_BYTES:]
    assert b.open(copy)


def test_open_into_reuses_the_scratch_buffer() -> None:
    a, b = sessions()
    scratch = bytearray()
    for size in (300_000, 10, 300_000, 0):
        frame = os.urandom(size)
        with b.open_into(bytes(a.seal(frame)), scratch) as view:
            assert bytes(view) == frame
    assert len(scratch) == 300_000


def test_open_into_rejects_tampering_and_frees_the_scratch_buffer() -> None:
    a, b = sessions()
    scratch = bytearray()
    tampered = bytearray(a.seal(b"x" * 1000))
    tampered[-1] ^= 1
    with pytest.raises(SecurityError, match="altered in transit"):
        b.open_into(bytes(tampered), scratch)
    scratch.extend(b"more")  # raises BufferError if a view of it were still alive
