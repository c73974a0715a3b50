"""The sim driver, the zlib codec and the WAN forwarder against what an independent review
found: each test failed before its fix. Real parts only: the sim driver on a shared state
file, the codec's own payloads, the forwarder process over datagram socket pairs.
"""

from __future__ import annotations

import mmap
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.builtin.sim.memory import GuestMemory
from novacron_sdk.builtin.sim.workloads import Workload, WorkloadSpec
from novacron_sdk.builtin.zlib_codec import ZeroZlibCodec
from novacron_sdk.encoding.interface import PageBatch
from novacron_sdk.errors import DriverError, EncodingError, InvalidStateError
from novacron_sdk.models import VMSpec, VMState


def test_a_looping_trace_always_advances(tmp_path: Path) -> None:
    """A 0.04-s looping trace stepped 10 ms at a time: rounding (6 * 0.04 + 0.04 is not
    7 * 0.04) made the replay loop spin forever at 0.28 s while holding the workload's lock,
    so pause() and destroy() never returned."""
    trace = tmp_path / "trace.txt"
    trace.write_text("0.0 1\n0.0 2\n0.03 3\n")
    workload = Workload(
        GuestMemory(1 << 20), WorkloadSpec(pattern="trace", trace_path=str(trace), loop=True)
    )

    def hundred_steps() -> None:
        for _ in range(100):
            workload.step(0.01)

    stepping = threading.Thread(target=hundred_steps, daemon=True)
    stepping.start()
    stepping.join(10)
    assert not stepping.is_alive(), "the trace replay loop does not advance"
    # 25 passes of 3 writes in 1.0 s of guest time (the clock's last step may reach the
    # 26th pass's two writes at t=0: float steps of 0.01 sum to just above 1.0).
    assert 75 <= workload.pages_written <= 77


async def test_another_process_cannot_destroy_a_migrating_vm(tmp_path: Path) -> None:
    """Two drivers on one state file (two processes, in effect): the one not running the
    migration destroyed the VM, and the migration's source broke (even its rollback)."""
    state = str(tmp_path / "sim.json")
    a, b = SimDriver({"state_path": state}), SimDriver({"state_path": state})
    try:
        work = {"pattern": "uniform", "rate_mbps": 5}
        vm = await a.create_vm(VMSpec(name="v", memory_mib=8, extra={"workload": work}))
        source = await a.open_migration_source(vm.id)
        assert (await b.get_vm(vm.id)).state is VMState.MIGRATING
        with pytest.raises(InvalidStateError, match="while it migrates"):
            await b.destroy(vm.id)
        with pytest.raises(InvalidStateError, match="while it migrates"):
            await b.ex_set_workload(vm.id, {"pattern": "idle"})
        await source.start_tracking()
        await source.rollback()
        assert (await b.get_vm(vm.id)).state is VMState.RUNNING
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": "novacron-sim-state/1", "vms": [\xff]}', "is corrupt"),
        (b'{"format": "something-else/9", "vms": []}', "has format 'something-else/9'"),
    ],
)
async def test_a_state_file_this_release_cannot_read_is_a_clear_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """Bad UTF-8 raised a raw UnicodeDecodeError; another format was accepted (and later
    rewritten as this release's)."""
    state = tmp_path / "sim.json"
    state.write_bytes(content)
    driver = SimDriver({"state_path": str(state)})
    try:
        with pytest.raises(DriverError, match=message):
            await driver.list_vms()
    finally:
        await driver.close()


@pytest.mark.parametrize(("offset", "value"), [(7, 0xFF), (6, 0x7E)])
def test_the_zlib_codec_refuses_reserved_header_bits(offset: int, value: int) -> None:
    """The reserved byte and undefined flag bits were accepted silently."""
    codec = ZeroZlibCodec()
    payload = bytearray(codec.new_encoder(4096).encode(PageBatch([1, 2], bytes(8192))))
    codec.new_decoder(4096).decode(bytes(payload))  # as encoded: fine
    payload[offset] = value
    with pytest.raises(EncodingError, match="reserved byte"):
        codec.new_decoder(4096).decode(bytes(payload))


def test_a_cut_link_is_free_again_after_the_heal(tmp_path: Path) -> None:
    """The forwarder (a real process) between two datagram socket pairs, 1 Mbit/s: a cut
    dropped the queued backlog but not the time the link would have spent sending it, so the
    first packet after the heal waited about 0.85 s behind bytes that no longer existed."""
    from novacron_sdk.testing.wan.counters import CONTROL, CONTROL_HALF, COUNTERS, STATS_SIZE
    from novacron_sdk.testing.wan.link import LinkProfile
    from novacron_sdk.testing.wan.netns import spawn_forwarder

    in_a, in_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    out_a, out_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (in_a, in_b, out_a, out_b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    stats, control_file = tmp_path / "stats", tmp_path / "control"
    stats.write_bytes(bytes(STATS_SIZE))
    control_file.write_bytes(bytes(CONTROL.size))
    profile = LinkProfile(rate_bps=1e6, delay_s=0.0, queue_bytes=200_000)
    process = spawn_forwarder(
        in_b.fileno(), out_a.fileno(), "10.0.0.2", profile, stats, control=control_file
    )
    fd = os.open(control_file, os.O_RDWR)
    control = mmap.mmap(fd, CONTROL.size)

    def packet(number: int, size: int = 1500) -> bytes:
        head = bytes([0x45]) + bytes(11) + bytes([10, 0, 0, 1, 10, 0, 0, 2])
        return head + number.to_bytes(4, "big") + bytes(size - 24)

    def switch(generation: int, cut: int) -> None:
        CONTROL_HALF.pack_into(control, 0, generation, cut)
        for _ in range(1000):
            if CONTROL_HALF.unpack_from(control, 16)[0] >= generation:
                return
            time.sleep(0.002)
        raise AssertionError("the forwarder did not take the switch")

    try:
        for _ in range(500):
            if COUNTERS.unpack_from(stats.read_bytes())[8]:
                break
            time.sleep(0.01)
        for number in range(1, 80):  # about 0.95 s of backlog at 1 Mbit/s
            in_a.send(packet(number))
        time.sleep(0.05)
        switch(1, 1)  # cut: the backlog is lost
        switch(2, 0)  # heal
        out_b.setblocking(False)
        try:
            while True:
                out_b.recv(65536)
        except BlockingIOError:
            pass
        out_b.setblocking(True)
        out_b.settimeout(5)
        started = time.monotonic()
        in_a.send(packet(999))
        data = out_b.recv(65536)
        waited = time.monotonic() - started
        assert int.from_bytes(data[20:24], "big") == 999
        # One 1500-byte packet takes 12 ms at 1 Mbit/s; the lost backlog took 0.85 s.
        assert waited < 0.3, f"the first packet after the heal waited {waited:.3f} s"
    finally:
        process.terminate()
        process.wait(10)
        control.close()
        os.close(fd)
        for sock in (in_a, in_b, out_a, out_b):
            sock.close()
