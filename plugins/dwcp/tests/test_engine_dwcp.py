"""The core migration engine running on the DWCP data plane, end to end on loopback.

Real sim drivers, the real DWCP transport and codec chain; nothing mocked.
"""

from __future__ import annotations

import asyncio

import pytest

from novacron_dwcp.encoding.wire import METHOD_ZSTD_LONG, parse_header
from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.encoding.interface import PageBatch
from novacron_sdk.migration.display import report_rows
from novacron_sdk.migration.inprocess import migrate_between
from novacron_sdk.migration.models import MigrationPhase, MigrationSettings
from novacron_sdk.migration.planner import plan_migration
from novacron_sdk.models import VMSpec, VMState
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.codec import ForwardingEncoder, WrappingCodec
from novacron_sdk.transport.interface import Endpoint


@pytest.fixture
def dwcp_plugins():
    plugins = build_plugin_manager(autoload=False, plugins=[("dwcp", _dwcp_hooks())])
    assert plugins.transports.default_name() == "dwcp"
    assert plugins.codecs.default_name() == "dwcp"
    return plugins


def _dwcp_hooks():
    import novacron_dwcp.hooks

    return novacron_dwcp.hooks


@pytest.mark.parametrize("verify", ["pages", "full"])
async def test_engine_uses_dwcp_by_default_and_memory_matches(dwcp_plugins, verify) -> None:
    src, dst = SimDriver({"host_name": "a"}), SimDriver({"host_name": "b"})
    try:
        vm = await src.create_vm(
            VMSpec(
                name="d1",
                memory_mib=64,
                extra={"fill": "mixed", "workload": {"pattern": "hot-set", "rate_mbps": 20}},
            )
        )
        await asyncio.sleep(0.3)
        report = await migrate_between(
            src, dst, vm.id, plugins=dwcp_plugins, settings=MigrationSettings(verify=verify)
        )
        assert report.outcome is MigrationPhase.COMPLETED
        assert (report.transport, report.codec) == ("dwcp", "dwcp")
        assert report.streams >= 1
        assert report.verification["mismatches"] == 0
        assert report.bytes_on_wire < report.memory_bytes  # the chain compressed
        moved = await dst.get_vm("d1")
        assert moved.state is VMState.RUNNING
    finally:
        await src.close()
        await dst.close()


async def test_streams_setting_sets_the_dwcp_channels_stream_count(dwcp_plugins) -> None:
    """``MigrationSettings(streams=N)`` opens the DWCP channel with N streams."""
    src, dst = SimDriver({"host_name": "a"}), SimDriver({"host_name": "b"})
    try:
        spec = VMSpec(name="d3", memory_mib=32, extra={"workload": {"pattern": "idle"}})
        vm = await src.create_vm(spec)
        settings = MigrationSettings(streams=3)
        report = await migrate_between(src, dst, vm.id, plugins=dwcp_plugins, settings=settings)
        assert report.transport == "dwcp"
        assert report.streams >= 3
        assert report.verification["mismatches"] == 0
    finally:
        await src.close()
        await dst.close()


async def test_idle_vm_is_bit_identical_after_dwcp_migration(dwcp_plugins) -> None:
    src, dst = SimDriver({"host_name": "a"}), SimDriver({"host_name": "b"})
    try:
        vm = await src.create_vm(
            VMSpec(
                name="d2", memory_mib=64, extra={"fill": "mixed", "workload": {"pattern": "idle"}}
            )
        )
        before = await src.ex_memory_digest(vm.id)
        await migrate_between(src, dst, vm.id, plugins=dwcp_plugins)
        moved = await dst.get_vm("d2")
        assert await dst.ex_memory_digest(moved.id) == before
    finally:
        await src.close()
        await dst.close()


async def test_first_round_on_a_slow_link_uses_the_long_window(dwcp_plugins) -> None:
    """At 8 Mbit/s (the engine's own cap, measured from send backpressure) the first round
    switches to the long-window streams before it ends; memory still matches."""
    methods: list[int] = []

    class Observed(ForwardingEncoder):
        """The chain's encoder, observed: the method of every payload it makes."""

        def encode(self, batch: PageBatch) -> bytes:
            payload = self.inner.encode(batch)
            methods.append(parse_header(payload, batch.page_size).method)
            return payload

    src, dst = SimDriver({"host_name": "a"}), SimDriver({"host_name": "b"})
    try:
        spec = VMSpec(
            name="d3", memory_mib=32, extra={"fill": "mixed", "workload": {"pattern": "idle"}}
        )
        vm = await src.create_vm(spec)
        before = await src.ex_memory_digest(vm.id)
        settings = MigrationSettings(max_bandwidth_bps=8e6)
        plan = plan_migration(dwcp_plugins, settings, Endpoint())
        plan.codec = WrappingCodec(plan.codec, Observed)
        report = await migrate_between(
            src, dst, vm.id, plugins=dwcp_plugins, settings=settings, plan=plan
        )
        first_round = methods[: -(-report.rounds[0].pages // settings.batch_pages)]
        assert first_round[0] != METHOD_ZSTD_LONG  # no estimate yet: independent frames
        assert METHOD_ZSTD_LONG in first_round  # then the measured link's choice
        assert report.link_bps is not None
        # The report counts the batches per method, as the CLI shows them.
        batches = {k: v for k, v in report.codec_stats.items() if k.startswith("batches:")}
        assert sum(batches.values()) == len(methods)
        assert any(name.endswith("-long") for name in batches)
        assert dict(report_rows(report))["codec methods (batches)"].count(" ") >= 1
        # And where the encoder's time went, inside the migration's own time.
        spent = report.codec_seconds
        assert set(spent) == {"classify", "store", "compress", "encode"}
        assert 0 < spent["classify"] + spent["store"] < spent["encode"] < report.total_s
        assert dict(report_rows(report))["encoder time"].startswith(f"{spent['encode']:.2f} s (")
        assert await dst.ex_memory_digest((await dst.get_vm("d3")).id) == before
    finally:
        await src.close()
        await dst.close()


async def test_short_sends_are_split_into_a_frame_per_stream(dwcp_plugins) -> None:
    """The pages sent while paused (fewer than a batch per stream) go in a batch per stream,
    so the transport can spread them over its streams instead of sending one large frame at
    one stream's share of the link."""
    from novacron_dwcp.transport.multistream import MultiStreamTransport

    sizes: list[int] = []

    class Observed(ForwardingEncoder):
        """The chain's encoder, observed: the size of every batch it gets."""

        def encode(self, batch: PageBatch) -> bytes:
            sizes.append(len(batch.indices))
            return self.inner.encode(batch)

    src, dst = SimDriver({"host_name": "a"}), SimDriver({"host_name": "b"})
    try:
        work = {"pattern": "hot-set", "rate_mbps": 20, "hot_fraction": 0.05, "seed": 3}
        vm = await src.create_vm(VMSpec(name="d4", memory_mib=32, extra={"workload": work}))
        await asyncio.sleep(0.3)
        settings = MigrationSettings(streams=4)
        plan = plan_migration(dwcp_plugins, settings, Endpoint())
        plan.transport = MultiStreamTransport({"adapt": False})  # four streams throughout
        plan.codec = WrappingCodec(plan.codec, Observed)
        report = await migrate_between(
            src, dst, vm.id, plugins=dwcp_plugins, settings=settings, plan=plan
        )
        assert report.streams == 4
        done = report.switchover
        assert done is not None
        assert 16 * 4 <= done.pages < 256 * 4  # a short send: split, in batches of 16 or more
        final: list[int] = []
        while sum(final) < done.pages:
            final.insert(0, sizes.pop())
        assert sum(final) == done.pages
        each = -(-done.pages // 4)
        assert final == [each] * (len(final) - 1) + [done.pages - each * (len(final) - 1)]
        assert len(final) == 4
    finally:
        await src.close()
        await dst.close()
