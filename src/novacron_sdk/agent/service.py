"""The host agent's logic: its VMs, outgoing migrations and the incoming migration endpoint.

The HTTP layer (``agent/app.py``) is a thin shell over :class:`AgentService`, so the same
service can be embedded in another process or driven directly in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from novacron_sdk.agent import stream
from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.metrics import AgentMetrics
from novacron_sdk.agent.stream_run import StreamMigrationRun
from novacron_sdk.cluster.ownership import (
    destination_fence,
    get_owner,
    record_owner,
    source_fence,
)
from novacron_sdk.compute.interface import StreamMigrationOffer
from novacron_sdk.consensus.interface import StateStore
from novacron_sdk.encoding.interface import PageCodec
from novacron_sdk.errors import (
    FeatureNotSupportedError,
    InvalidStateError,
    MigrationError,
    NovaCronError,
)
from novacron_sdk.hypervisors.interface import (
    HypervisorDriver,
    MigrationSource,
    MigrationSourceInfo,
)
from novacron_sdk.migration import protocol
from novacron_sdk.migration.engine import (
    DESTINATION_CHECK_S,
    HANDOVER_ANSWER_S,
    MigrationEngine,
)
from novacron_sdk.migration.models import MigrationEvent, MigrationReport, MigrationSettings
from novacron_sdk.migration.planner import MigrationPlan, plan_migration
from novacron_sdk.migration.protocol import Msg
from novacron_sdk.migration.receiver import MigrationReceiver
from novacron_sdk.models import VM, DriverFeature, Host, VMState
from novacron_sdk.plugin.manager import NovaCronPluginManager
from novacron_sdk.transport.interface import Channel, Endpoint, Listener, Transport

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
FINISHED_RETENTION_S = 3600.0
"""How long a finished migration's entry (report, events, incoming state) is kept."""
CANCEL_PATIENCE_S = 10.0
"""On close, how long cancelled migrations get to roll back."""
HANDOVER_PATIENCE_S = 2 * HANDOVER_ANSWER_S + DESTINATION_CHECK_S + 10.0
"""On close, how much longer a migration past VERIFY gets: its answers' timeouts, then the
check of the destination (a hand-over cannot be cancelled, see docs/migration.md)."""
INCOMING_CONNECT_TIMEOUT_S = 60.0
MAX_EVENTS_KEPT = 2000


@dataclass
class OutgoingMigration:
    """A migration this agent runs as the source."""

    id: str
    vm: str
    destination: str
    engine: MigrationEngine | StreamMigrationRun
    events: list[MigrationEvent] = field(default_factory=list)
    dropped: int = 0  # events numbered before ``events[0]`` and no longer kept
    report: MigrationReport | None = None
    error: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API."""
        report = self.report or self.engine.report
        return {
            "id": self.id,
            "vm": self.vm,
            "destination": self.destination,
            "phase": self.engine.phase.value,
            "done": self.done.is_set(),
            "events": len(self.events),
            "error": self.error,
            "report": report.model_dump(mode="json") if report else None,
        }


@dataclass
class IncomingMigration:
    """A migration this agent receives."""

    id: str
    token: str
    info: MigrationSourceInfo
    transport: str
    receiver: MigrationReceiver
    created: float = field(default_factory=time.monotonic)
    connected: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API (never includes the token)."""
        vm = self.receiver.vm
        return {
            "id": self.id,
            "state": self.receiver.state,
            "error": self.receiver.error,
            "vm": vm.model_dump(mode="json") if vm else None,
            "pages_written": self.receiver.pages_written,
        }


class AgentService:
    """One host: a hypervisor driver, its migrations, and its migration listeners."""

    def __init__(
        self,
        *,
        plugins: NovaCronPluginManager,
        driver: HypervisorDriver,
        name: str,
        migration_host: str = "127.0.0.1",
        migration_port: int = 0,
        migration_advertise: str | None = None,
        migration_defaults: MigrationSettings | None = None,
        capacity: tuple[int, int] = (8, 16384),
        security: Any | None = None,
        incoming_timeout_s: float = INCOMING_CONNECT_TIMEOUT_S,
        finished_retention_s: float = FINISHED_RETENTION_S,
        transport_settings: Mapping[str, Mapping[str, Any]] | None = None,
        codec_settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.plugins = plugins
        self.driver = driver
        self.name = name
        self.url = ""
        self.migration_host = migration_host
        self.migration_port = migration_port
        self.migration_advertise = migration_advertise
        self.migration_defaults = migration_defaults or MigrationSettings()
        self.capacity = capacity
        self.incoming_timeout_s = incoming_timeout_s
        self.finished_retention_s = finished_retention_s
        self._finished_at: dict[tuple[str, str], float] = {}  # (table, id) -> first seen ended
        self.transport_settings = {k: dict(v) for k, v in (transport_settings or {}).items()}
        self.codec_settings = {k: dict(v) for k, v in (codec_settings or {}).items()}
        # An AgentSecurity from the "agent.security" init component, or None. Duck-typed:
        # the core never imports a security plugin.
        self.security = security
        self.state_store: StateStore | None = None
        """Set by the ``cluster.member`` component: VM ownership fences migrations."""
        self.metrics = AgentMetrics()
        self.outgoing: dict[str, OutgoingMigration] = {}
        self.incoming: dict[str, IncomingMigration] = {}
        self.incoming_streams: dict[str, stream.IncomingStream] = {}
        self._listeners: dict[str, Listener] = {}
        self._listener_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._preparing: set[str] = set()  # incoming migration ids between check and entry
        self._stopping = False  # the agent shuts down: long-polls answer at once

    async def start(self) -> None:
        """Start background housekeeping (abandoned incoming migrations)."""
        self._reaper = asyncio.create_task(self._reap_incoming())

    async def stopping(self) -> None:
        """The agent is shutting down: event long-polls answer now with what they have, so
        the HTTP server can stop without waiting for them."""
        self._stopping = True
        for mig in self.outgoing.values():
            async with mig.changed:
                mig.changed.notify_all()

    async def close(self) -> None:
        """Cancel migrations, close listeners and the driver."""
        if self._reaper:
            self._reaper.cancel()
        for mig in self.outgoing.values():
            mig.engine.cancel()
        running = {m.task: m for m in self.outgoing.values() if m.task and not m.task.done()}
        if running:
            _, pending = await asyncio.wait(running, timeout=CANCEL_PATIENCE_S)
            if pending:
                # Past VERIFY a hand-over is not cancellable: it ends with the VM at exactly
                # one host. Closing the driver under it could leave the VM paused at both.
                names = ", ".join(sorted(f"{running[t].vm} ({running[t].id})" for t in pending))
                log.warning(
                    "waiting up to %.0f s for the hand-over of %s to end before stopping",
                    HANDOVER_PATIENCE_S,
                    names,
                )
                _, pending = await asyncio.wait(pending, timeout=HANDOVER_PATIENCE_S)
            for task in pending:
                log.error("stopping with the migration %s unfinished", running[task].id)
        for incoming in list(self.incoming_streams.values()):
            with contextlib.suppress(NovaCronError, OSError):
                await stream.finish_incoming(incoming, False, "the destination agent stopped")
        for listener in self._listeners.values():
            await listener.close()
        await self.driver.close()

    # -- host and VMs ----------------------------------------------------------------------
    async def host(self) -> Host:
        """This host, as placement sees it."""
        hosts = await self.driver.list_hosts()
        base = hosts[0] if hosts else None
        return Host(
            id=self.name,
            name=self.name,
            driver=self.driver.name,
            address=self.url or None,
            vcpus=base.vcpus if base else self.capacity[0],
            memory_mib=base.memory_mib if base else self.capacity[1],
            labels=dict(base.labels) if base else {},
        )

    async def vm_digest(self, vm_id: str) -> str:
        """Digest of a VM's whole memory, for drivers that offer ``ex_memory_digest``."""
        vm = await self.driver.get_vm(vm_id)
        digest = getattr(self.driver, "ex_memory_digest", None)
        if digest is None:
            msg = f"driver {self.driver.name!r} cannot digest VM memory (no ex_memory_digest)"
            raise FeatureNotSupportedError(msg)
        return str(await digest(vm.id))

    # -- outgoing ----------------------------------------------------------------------------
    async def start_migration(
        self, vm_ref: str, destination: str, overrides: dict[str, Any] | None = None
    ) -> OutgoingMigration:
        """Validate, prepare the destination, then migrate in the background.

        Drivers whose hypervisor streams the VM itself (``STREAM_MIGRATION_SOURCE`` without
        ``LIVE_MIGRATION_SOURCE``) migrate through ``agent.stream``.
        """
        settings, dest_url, vm = await self._check_request(vm_ref, destination, overrides)
        # A VM created since the membership's last pass has no owner record yet: record
        # this host now, before the destination reads the record it must win at COMMIT
        # (otherwise the membership could create it between that read and COMMIT). A record
        # naming another host would leave the migration unfenced (a roll-back could not
        # re-claim the VM): refuse.
        store = self.state_store
        if store is not None and not await record_owner(store, vm.name, self.name):
            owner = await get_owner(store, vm.name)
            if owner is not None and owner.host != self.name:
                msg = (
                    f"VM {vm.name} is recorded as owned by host {owner.host!r}, not by "
                    f"{self.name!r}; not migrating it, since its migration could not be "
                    "fenced. Check the ownership record (novacron status --cluster): VM "
                    "names must be unique in the cluster"
                )
                raise MigrationError(msg)
        if self._streams():
            return await stream.start_outgoing(self, vm, settings, dest_url)
        migration_id = uuid.uuid4().hex[:12]
        plan = plan_migration(
            self.plugins,
            settings,
            Endpoint(host=urlsplit(dest_url).hostname or "127.0.0.1"),
            transport_settings=self.transport_settings,
            codec_settings=self.codec_settings,
        )
        source = await self.driver.open_migration_source(vm.id)
        auth = self._auth()
        try:
            async with AgentClient(dest_url, auth=auth) as dest:
                prepared = await dest.prepare_incoming(
                    migration_id=migration_id,
                    info=source.info(),
                    transport=plan.transport_name,
                    codec=plan.codec_name,
                    verify=settings.verify,
                )
            endpoint, token = _prepared_answer(prepared, dest_url)
        except BaseException as exc:
            await source.rollback()
            if type(exc) is NovaCronError:  # an error of no particular kind from the destination
                msg = f"destination {dest_url} could not prepare the migration: {exc}"
                raise MigrationError(msg) from exc
            raise
        engine = MigrationEngine(
            plugins=self.plugins,
            settings=settings,
            plan=plan,
            vm=vm.name,
            source_name=self.name,
            destination_name=str(prepared.get("host", dest_url)),
            migration_id=migration_id,
            on_event=lambda event: self._record_event(migration_id, event),
            rollback_fence=(
                source_fence(self.state_store, vm.name, self.name)
                if self.state_store is not None
                else None
            ),
        )
        mig = OutgoingMigration(id=migration_id, vm=vm.id, destination=dest_url, engine=engine)
        self.outgoing[migration_id] = mig
        if plan.streams:
            endpoint = endpoint.model_copy(
                update={"options": endpoint.options | {"streams": str(plan.streams)}}
            )
        mig.task = asyncio.create_task(
            self._run_outgoing(
                mig,
                engine,
                source,
                plan,
                endpoint=endpoint,
                token=token,
                expect_peer=getattr(auth, "peer_fingerprint", None),
            )
        )
        return mig

    def _streams(self) -> bool:
        features = self.driver.features
        return (
            DriverFeature.LIVE_MIGRATION_SOURCE not in features
            and DriverFeature.STREAM_MIGRATION_SOURCE in features
        )

    async def _check_request(
        self, vm_ref: str, destination: str, overrides: dict[str, Any] | None
    ) -> tuple[MigrationSettings, str, VM]:
        if not self._streams():
            self.driver.require(DriverFeature.LIVE_MIGRATION_SOURCE)
        settings = MigrationSettings.model_validate(
            self.migration_defaults.model_dump() | (overrides or {})
        )
        dest_url = _check_url(destination)
        if dest_url.rstrip("/") == self.url.rstrip("/"):
            msg = f"destination {destination} is this agent; choose another host"
            raise MigrationError(msg)
        vm = await self.driver.get_vm(vm_ref)
        # A hypervisor stream also moves a paused guest (it stays paused at the destination).
        movable = {VMState.RUNNING, VMState.PAUSED} if self._streams() else {VMState.RUNNING}
        if vm.state not in movable:
            msg = f"VM {vm.name} is {vm.state.value}; only running VMs can be live-migrated"
            raise InvalidStateError(msg)
        if any(m.vm == vm.id and not m.done.is_set() for m in self.outgoing.values()):
            msg = f"VM {vm.name} is already being migrated"
            raise InvalidStateError(msg)
        return settings, dest_url, vm

    async def _run_outgoing(
        self,
        mig: OutgoingMigration,
        engine: MigrationEngine,
        source: MigrationSource,
        plan: MigrationPlan,
        *,
        endpoint: Endpoint,
        token: str,
        expect_peer: str | None = None,
    ) -> None:
        try:
            try:
                channel = await plan.transport.connect(endpoint)
                if self.security is not None:
                    # Sealed, and its peer must be the agent the control API authenticated.
                    channel = await self.security.secure(
                        channel, "initiator", expect_peer=expect_peer
                    )
            except BaseException:
                await source.rollback()
                raise
            try:
                mig.report = await engine.run(
                    source,
                    channel,
                    hello={"token": token},
                    check_destination=lambda: self._destination_runs(mig.destination, mig.id),
                )
                self.metrics.migration_done(mig.report)
            finally:
                await channel.close()
        except (NovaCronError, OSError) as exc:
            mig.error = str(exc)
            self.metrics.migration_failed()
            log.warning("migration %s of %s failed: %s", mig.id, mig.vm, exc)
        finally:
            mig.done.set()
            async with mig.changed:
                mig.changed.notify_all()

    def _auth(self) -> Any:
        """Client auth for calls to other agents; None when security is off."""
        return self.security.http_auth() if self.security is not None else None

    def _record_event(self, migration_id: str, event: MigrationEvent) -> None:
        mig = self.outgoing.get(migration_id)
        if mig is None:  # events before registration (none today): nothing to keep them in
            return
        mig.events.append(event)
        if len(mig.events) > MAX_EVENTS_KEPT:
            extra = len(mig.events) - MAX_EVENTS_KEPT
            del mig.events[:extra]
            mig.dropped += extra  # numbers stay absolute: followers neither skip nor stall

        async def notify() -> None:
            async with mig.changed:
                mig.changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def events(
        self, migration_id: str, after: int, wait_s: float
    ) -> tuple[list[MigrationEvent], int]:
        """Events numbered > ``after`` (long-poll up to ``wait_s``); and the newest number.

        Numbers count every event of the migration; only the newest MAX_EVENTS_KEPT are kept,
        so a follower that fell further behind gets the oldest kept ones next.
        """
        mig = self.get_outgoing(migration_id)

        def ready() -> bool:
            newer = mig.dropped + len(mig.events) > after
            return newer or mig.done.is_set() or self._stopping

        if not ready() and wait_s > 0:
            async with mig.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(mig.changed.wait_for(ready), wait_s)
        return mig.events[max(0, after - mig.dropped) :], mig.dropped + len(mig.events)

    def get_outgoing(self, migration_id: str) -> OutgoingMigration:
        """An outgoing migration by id."""
        from novacron_sdk.errors import NotFoundError

        try:
            return self.outgoing[migration_id]
        except KeyError:
            msg = f"no migration {migration_id!r} on agent {self.name}"
            raise NotFoundError(msg) from None

    async def _destination_runs(self, dest_url: str, migration_id: str) -> bool | None:
        try:
            async with AgentClient(dest_url, timeout=5, auth=self._auth()) as dest:
                state = await dest.incoming_state(migration_id)
        except (NovaCronError, OSError, ValueError, TypeError):
            return None  # unreachable, or an answer that is not JSON: nobody can tell
        if state.get("state") == "active":
            return True
        if state.get("state") == "aborted":
            return False
        return None

    # -- incoming ----------------------------------------------------------------------------
    async def prepare_incoming(
        self,
        *,
        migration_id: str,
        info: MigrationSourceInfo,
        transport: str,
        codec: str,
        verify: str,
    ) -> dict[str, Any]:
        """Open a sink and make sure a listener for ``transport`` runs; return where to connect."""
        self.driver.require(DriverFeature.LIVE_MIGRATION_SINK)
        if migration_id in self.incoming or migration_id in self._preparing:
            msg = f"migration {migration_id} is already being received here"
            raise InvalidStateError(msg)
        # Reserved before the first await: a second prepare of the same id is refused, not
        # let through to open a sink that the first one's entry would then hide for good.
        self._preparing.add(migration_id)
        try:
            # Before the sink opens: a codec may read files to start (DWCP reference files).
            decoder = await asyncio.to_thread(self.new_codec(codec).new_decoder, info.page_size)
            listener = await self._listener(transport)
            fence = (
                await destination_fence(self.state_store, info.spec.name, self.name)
                if self.state_store is not None
                else None
            )
            sink = await self.driver.open_migration_sink(info)
            receiver = MigrationReceiver(sink, info, decoder, verify=verify, fence=fence)
            token = secrets.token_hex(16)
            self.incoming[migration_id] = IncomingMigration(
                id=migration_id, token=token, info=info, transport=transport, receiver=receiver
            )
        finally:
            self._preparing.discard(migration_id)
        self.metrics.incoming.inc()
        return {
            "endpoint": self.advertised(listener.endpoint).model_dump(mode="json"),
            "token": token,
            "host": self.name,
        }

    def advertised(self, endpoint: Endpoint) -> Endpoint:
        """Where sources connect to the migration listener bound at ``endpoint``."""
        if not self.migration_advertise:
            return endpoint
        host, _, port = self.migration_advertise.rpartition(":")
        return endpoint.model_copy(update={"host": host, "port": int(port)})

    async def prepare_incoming_stream(
        self, *, migration_id: str, offer: StreamMigrationOffer, transport: str
    ) -> dict[str, Any]:
        """Have the driver prepare a hypervisor-stream migration; return its ticket."""
        return await stream.prepare_incoming(self, migration_id, offer, transport)

    async def finish_incoming_stream(
        self, migration_id: str, *, succeeded: bool, error: str | None
    ) -> stream.IncomingStream:
        """The source says how the stream migration ended; discard it here unless it arrived."""
        incoming = self.get_incoming_stream(migration_id)
        await stream.finish_incoming(incoming, succeeded, error)
        return incoming

    def get_incoming_stream(self, migration_id: str) -> stream.IncomingStream:
        """An incoming stream migration by id."""
        from novacron_sdk.errors import NotFoundError

        try:
            return self.incoming_streams[migration_id]
        except KeyError:
            msg = f"no incoming stream migration {migration_id!r} on agent {self.name}"
            raise NotFoundError(msg) from None

    def get_incoming(self, migration_id: str) -> IncomingMigration:
        """An incoming migration by id."""
        from novacron_sdk.errors import NotFoundError

        try:
            return self.incoming[migration_id]
        except KeyError:
            msg = f"no incoming migration {migration_id!r} on agent {self.name}"
            raise NotFoundError(msg) from None

    def new_codec(self, name: str) -> PageCodec:
        """A page codec ``name`` built with its ``codecs.settings`` entry."""
        return self.plugins.codecs.get(name)(self.codec_settings.get(name, {}))

    def new_transport(self, name: str) -> Transport:
        """A transport ``name`` built with its ``transports.settings`` entry."""
        return self.plugins.transports.get(name)(self.transport_settings.get(name, {}))

    async def _listener(self, transport: str) -> Listener:
        async with self._listener_lock:
            if transport not in self._listeners:
                self._listeners[transport] = await self.new_transport(transport).listen(
                    Endpoint(host=self.migration_host, port=self.migration_port),
                    self._accept,
                )
            return self._listeners[transport]

    async def _accept(self, channel: Channel) -> None:
        """A source connected: route it to its prepared incoming migration by id and token."""
        if self.security is not None:
            try:
                channel = await self.security.secure(channel, "responder")
            except (NovaCronError, OSError) as exc:
                # The failed handshake closed the channel; no migration frame was read.
                log.warning("rejected a migration connection: %s", exc)
                return
        try:
            hello = await asyncio.wait_for(
                protocol.expect_json(channel, Msg.HELLO), HELLO_TIMEOUT_S
            )
            incoming = self.incoming.get(str(hello.get("migration_id")))
            if hello.get("protocol") != protocol.PROTOCOL_VERSION:
                msg = (
                    f"migration protocol version {hello.get('protocol')} is not supported: this "
                    f"agent speaks version {protocol.PROTOCOL_VERSION}; run the same "
                    "novacron-sdk release on both hosts"
                )
                raise MigrationError(msg)
            if hello.get("stream"):
                await stream.route_channel(self.incoming_streams, channel, hello)
                return
            if incoming is None or not hmac.compare_digest(
                str(hello.get("token", "")), incoming.token
            ):
                msg = "unknown migration id or wrong token"
                raise MigrationError(msg)
            if incoming.connected:
                msg = "this migration is already connected"
                raise MigrationError(msg)
            incoming.connected = True
        except (NovaCronError, OSError, TimeoutError) as exc:
            log.warning("rejected a migration connection: %s", exc)
            with contextlib.suppress(NovaCronError, OSError):
                await channel.send(protocol.pack_json(Msg.ERROR, {"reason": str(exc)}))
            await channel.close()
            return
        try:
            await incoming.receiver.run(channel)
        finally:
            await channel.close()

    async def _reap_incoming(self) -> None:
        """Abort prepared migrations whose source never connected; forget finished ones."""
        limit = self.incoming_timeout_s
        while True:
            await asyncio.sleep(min(5.0, limit / 4, self.finished_retention_s / 4))
            now = time.monotonic()
            self._forget_finished(now)
            for inc in list(self.incoming.values()):
                stale = now - inc.created > limit
                if not inc.connected and stale and inc.receiver.state == "pending":
                    log.warning("incoming migration %s: source never connected", inc.id)
                    inc.receiver.state = "aborted"
                    inc.receiver.error = "source never connected"
                    try:
                        await inc.receiver.sink.abort()
                    except Exception:  # one broken sink must not stop the reaping of others
                        log.exception("incoming migration %s: discarding it failed", inc.id)
            try:
                await stream.reap(self.incoming_streams, limit)
            except Exception:
                log.exception("reaping incoming stream migrations failed; trying again later")

    def _forget_finished(self, now: float) -> None:
        """Drop the entries of migrations that ended more than ``finished_retention_s`` ago
        (timed from when this housekeeping first saw them ended)."""
        tables: list[tuple[str, dict[str, Any], Callable[[Any], bool]]] = [
            ("outgoing", self.outgoing, lambda mig: mig.done.is_set()),
            ("incoming", self.incoming, lambda inc: inc.receiver.state in ("active", "aborted")),
            ("streams", self.incoming_streams, lambda inc: inc.state in ("completed", "aborted")),
        ]
        for name, table, ended in tables:
            for key, entry in list(table.items()):
                if not ended(entry):
                    continue
                seen = self._finished_at.setdefault((name, key), now)
                if now - seen >= self.finished_retention_s:
                    del table[key]
                    del self._finished_at[(name, key)]
        live = {(name, key) for name, table, _ in tables for key in table}
        for stale in self._finished_at.keys() - live:
            del self._finished_at[stale]


def _prepared_answer(prepared: Any, dest_url: str) -> tuple[Endpoint, str]:
    """Where to connect and the routing token, from a destination's prepare answer."""
    try:
        endpoint = Endpoint.model_validate(prepared["endpoint"])
        token = prepared["token"]
        if not isinstance(token, str) or not token:
            raise TypeError(f"token {token!r} is not a non-empty string")
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        msg = (
            f"destination {dest_url} gave an unusable answer to prepare ({detail}); is it "
            "running the same novacron-sdk release? The VM keeps running here"
        )
        raise MigrationError(msg) from exc
    return endpoint, token


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"destination {url!r} is not an agent URL like http://127.0.0.1:8471"
        raise MigrationError(msg)
    return url.rstrip("/")


def vm_summary(vm: VM) -> dict[str, Any]:
    """JSON form of a VM."""
    return vm.model_dump(mode="json")
