"""The etcd store and leader election on real etcd: the fixes of a review, each reproduced as
it was found, for both clients. Every test here failed before its fix.

Fault injectors, named in each docstring: SIGSTOP of one member (it keeps accepting TCP
connections and never answers; resumed before the cluster is stopped), a TCP proxy that
silently drops everything (a partition without resets), and etcd's own compaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from novacron_dwcp.consensus.etcd_common import EtcdOutcomeUnknownError
from novacron_dwcp.consensus.etcd_store import EtcdStore
from novacron_dwcp.consensus.local_cluster import LocalEtcdCluster
from novacron_sdk.consensus.election import Election
from novacron_sdk.consensus.interface import Compare, Op, WatchEvent
from novacron_sdk.testing.waiting import eventually

pytestmark = pytest.mark.slow

CLIENTS = ["grpc", "gateway"]


@contextlib.contextmanager
def hung(cluster: LocalEtcdCluster, index: int) -> Iterator[None]:
    """Fault injector: SIGSTOP member ``index`` (TCP still accepted, nothing answered) and
    SIGCONT it on the way out."""
    process = cluster.members[index].process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


@pytest.mark.parametrize("client", CLIENTS)
async def test_one_hung_member_of_three_does_not_stop_the_client(
    client: str,
    etcd_fresh_cluster: LocalEtcdCluster,
    etcd_store_factory: Callable[..., EtcdStore],
) -> None:
    """Fault injector: hung (member 0, the one the client uses first). Reads move on to the
    next member after one attempt's timeout; a transaction sent to the hung member is an
    error saying its outcome is unknown, and the next call goes elsewhere."""
    # An attempt on the hung member waits attempt_s, a call to a live one milliseconds: a
    # read that went back to the hung member would wait attempt_s again, twice back_s.
    attempt_s = 6.0
    back_s = attempt_s / 2
    reader = etcd_store_factory(
        client, cluster=etcd_fresh_cluster, timeout_s=30.0, attempt_timeout_s=attempt_s
    )
    # A transaction gets one attempt of all of timeout_s: it waits that long on the hung member.
    writer = etcd_store_factory(client, cluster=etcd_fresh_cluster, timeout_s=attempt_s)
    await reader.put("/k", b"v")
    with hung(etcd_fresh_cluster, 0):

        async def unknown_outcome() -> None:
            compare = [Compare(key="/k", target="value", value=b"v")]
            with pytest.raises(EtcdOutcomeUnknownError, match="may or may not have applied"):
                await writer.txn(compare, [Op(kind="put", key="/k", value=b"w")])

        # The writer waits out the hung member meanwhile (its own client: independent).
        first_txn = asyncio.create_task(unknown_outcome())
        try:
            # The first read waits out one attempt on the hung member (within timeout_s).
            kv = await reader.get("/k")
            assert kv is not None
            assert kv.value == b"v"
            for attempt in (1, 2):
                try:
                    kv = await asyncio.wait_for(reader.get("/k"), back_s)
                except TimeoutError:
                    pytest.fail(f"get {attempt} went back to the hung member")
                assert kv is not None
                assert kv.value == b"v"
            await first_txn
        finally:
            first_txn.cancel()
            await asyncio.gather(first_txn, return_exceptions=True)
        result = await writer.txn([], [Op(kind="get", key="/k")])
        assert result.succeeded


class Blackhole:
    """Fault injector: a TCP proxy to one member that, once ``drop`` is set, silently drops
    every byte in both directions (a partition: no reset, no answer)."""

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        self.drop = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                if not self.drop:
                    dst.write(data)
                    await dst.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def blackhole(etcd_cluster: LocalEtcdCluster) -> AsyncIterator[Blackhole]:
    """A Blackhole in front of the shared cluster's first member, closed afterwards."""
    proxy = Blackhole(etcd_cluster.members[0].client_port)
    await proxy.start()
    yield proxy
    await proxy.close()


def watches(store: EtcdStore) -> list[str]:
    """The prefixes of the watches ``store`` starts from now on (a standby waiting for the
    leader's key watches it): a test waits for one instead of sleeping."""
    started: list[str] = []
    watch = store.watch

    def counted(prefix: str, *, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        started.append(prefix)
        return watch(prefix, start_revision=start_revision)

    store.watch = counted  # type: ignore[method-assign]
    return started


@pytest.mark.parametrize("client", CLIENTS)
async def test_partitioned_leader_stops_leading_before_another_is_elected(
    client: str, blackhole: Blackhole, etcd_store_factory: Callable[..., EtcdStore]
) -> None:
    """Fault injector: Blackhole between the leader and etcd. When the other candidate is
    elected, the cut-off leader must already have stopped leading (its lease deadline)."""
    cut_off = etcd_store_factory(client, endpoints=[f"http://127.0.0.1:{blackhole.port}"])
    other = etcd_store_factory(client)
    standby_watches = watches(other)
    a = Election(cut_off, "controller", "host-a", ttl_s=3)
    b = Election(other, "controller", "host-b", ttl_s=3)
    await a.campaign()
    waiting = asyncio.create_task(b.campaign())
    lost = False
    try:
        await eventually(lambda: bool(standby_watches), "host-b waits for the leader's key")
        blackhole.drop = True
        await asyncio.wait_for(waiting, 15)
        assert not a.is_leader, "two leaders: the partitioned one still believes it leads"
        await asyncio.wait_for(a.wait_lost(), 10)
        lost = True
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await b.resign()
        if not lost:  # its keep-alive still runs (resigning waits out the store's timeout)
            await a.resign()


@pytest.mark.parametrize("client", CLIENTS)
async def test_standby_waits_although_the_holders_revision_was_compacted(
    client: str,
    etcd_fresh_cluster: LocalEtcdCluster,
    etcd_store_factory: Callable[..., EtcdStore],
) -> None:
    """Fault injector: etcd's compaction past the leader's election revision (what
    --auto-compaction-retention does). The standby must wait, and win on resignation."""
    store = etcd_store_factory(client, cluster=etcd_fresh_cluster)
    a = Election(store, "controller", "host-a", ttl_s=10)
    await a.campaign()
    for i in range(5):
        await store.put("/novacron/other", str(i).encode())
    revision = await store.revision()
    async with httpx.AsyncClient() as http:
        response = await http.post(
            etcd_fresh_cluster.client_urls[0] + "/v3/kv/compaction",
            json={"revision": str(revision)},
        )
        assert response.status_code == httpx.codes.OK
    standby_watches = watches(store)
    b = Election(store, "controller", "host-b", ttl_s=10)
    waiting = asyncio.create_task(b.campaign())
    try:
        # A watch from the compacted revision failed at once and ended the campaign: give
        # the standby's watch time to fail (or not) once it started.
        await eventually(lambda: bool(standby_watches), "host-b watches the leader's key")
        await asyncio.sleep(0.5)
        assert not waiting.done(), waiting.exception() if waiting.done() else None
        await a.resign()
        await asyncio.wait_for(waiting, 20)
        assert b.is_leader
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await a.resign()
        await b.resign()


def _watcher_and_writer(
    cluster: LocalEtcdCluster, factory: Callable[..., EtcdStore], client: str
) -> tuple[EtcdStore, EtcdStore]:
    """A store of ``client`` that starts on member 0, and a writer that never uses member 0
    (so that only the watch meets its fault)."""
    writer = factory("gateway", cluster=cluster, endpoints=cluster.client_urls[1:], timeout_s=15.0)
    return factory(client, cluster=cluster), writer


async def _follow(store: EtcdStore, start: int, received: list[str], count: int) -> None:
    async for event in store.watch("w/", start_revision=start):
        received.append(event.key)
        if len(received) == count:
            return


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_watch_whose_member_hangs_resumes_on_another(
    client: str,
    etcd_fresh_cluster: LocalEtcdCluster,
    etcd_store_factory: Callable[..., EtcdStore],
) -> None:
    """Fault injector: hung (member 0, serving an idle watch). The watch must notice within
    its idle check and resume elsewhere with every event once, in order. The gateway client
    waited for the hung member's next line for ever; the gRPC client's pings timed out only after
    gRPC's own ping timeout (60 s by default), not the 5 s its keep-alive setting says."""
    cluster = etcd_fresh_cluster
    watcher, writer = _watcher_and_writer(cluster, etcd_store_factory, client)
    start = await writer.put("w/00", b"0")
    received: list[str] = []
    task = asyncio.create_task(_follow(watcher, start, received, 10))
    try:
        await eventually(lambda: received == ["w/00"], "the watch delivers the first event")
        with hung(cluster, 0):
            for i in range(1, 10):
                await writer.put(f"w/{i:02d}", b"x")
            await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert received == [f"w/{i:02d}" for i in range(10)]


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_watch_started_on_a_hung_member_resumes_on_another(
    client: str,
    etcd_fresh_cluster: LocalEtcdCluster,
    etcd_store_factory: Callable[..., EtcdStore],
) -> None:
    """Fault injector: hung (member 0, the watcher's first endpoint, before the watch starts).
    The gateway client waited for the hung member's response headers for ever (the gRPC
    client already gave up when its connection attempt timed out)."""
    cluster = etcd_fresh_cluster
    watcher, writer = _watcher_and_writer(cluster, etcd_store_factory, client)
    start = await writer.put("w/00", b"0")
    received: list[str] = []
    with hung(cluster, 0):
        # From a known revision, so that the watch itself is the first call to member 0.
        task = asyncio.create_task(_follow(watcher, start, received, 5))
        try:
            for i in range(1, 5):
                await writer.put(f"w/{i:02d}", b"x")
            await asyncio.wait_for(task, 60)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert received == [f"w/{i:02d}" for i in range(5)]
