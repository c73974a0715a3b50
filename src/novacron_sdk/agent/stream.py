"""Stream migrations between agents, for drivers whose hypervisor streams the VM (QEMU).

The source agent asks its driver for an offer, asks the destination agent to prepare
(``POST /v1/incoming-streams``: the destination driver defines the VM and starts a sink on
the agent's migration transport), then lets its driver migrate toward the ticket and tells
the destination how it ended (``POST /v1/incoming-streams/{id}/finish``), which discards
what it prepared unless the VM arrived.

Every connection of the stream reaches the destination through the agent's one migration
listener: the source opens it with a HELLO naming the migration, a stream flag and the
one-time token, and the destination hands the rest of the channel to the driver's sink.
With security enabled each connection is sealed and its peer checked, as for page-level
migrations. Progress events and the report look like the page-level engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.stream_run import StreamMigrationRun
from novacron_sdk.cluster.ownership import destination_fence, source_fence
from novacron_sdk.compute.interface import (
    IncomingStreamMigration,
    StreamMigrationOffer,
    StreamMigrationTicket,
)
from novacron_sdk.errors import InvalidStateError, MigrationError, NovaCronError, TransportError
from novacron_sdk.migration import protocol
from novacron_sdk.migration.models import (
    MigrationSettings,
)
from novacron_sdk.migration.protocol import Msg
from novacron_sdk.models import VM, DriverFeature
from novacron_sdk.transport.interface import (
    Channel,
    ChannelHandler,
    Endpoint,
    Listener,
    Transport,
)

if TYPE_CHECKING:
    from novacron_sdk.agent.service import AgentService, OutgoingMigration
    from novacron_sdk.plugin.manager import NovaCronPluginManager

log = logging.getLogger(__name__)


class StreamSourceTransport(Transport):
    """The source's transport: each connection is announced to the destination agent."""

    name = "agent-stream"

    def __init__(
        self,
        inner: Transport,
        *,
        migration_id: str,
        token: str,
        security: Any | None = None,
        expect_peer: str | None = None,
        streams: int | None = None,
    ) -> None:
        super().__init__()
        # Named and sized like the transport it wraps: the sink and source choose their
        # stream codec and frame sizes by these.
        vars(self).update(
            name=inner.name, max_frame_size=inner.max_frame_size, max_streams=inner.max_streams
        )
        self.inner = inner
        self.migration_id = migration_id
        self.token = token
        self.security = security
        self.expect_peer = expect_peer
        self.streams = streams

    async def listen(self, endpoint: Endpoint, handler: ChannelHandler) -> Listener:
        """Not offered: the source only connects."""
        msg = "the source side of a stream migration does not listen"
        raise TransportError(msg)

    async def connect(self, endpoint: Endpoint, *, timeout: float = 10.0) -> Channel:
        """Connect, seal when security is on, and send the routing HELLO."""
        if self.streams:
            options = endpoint.options | {"streams": str(self.streams)}
            endpoint = endpoint.model_copy(update={"options": options})
        channel = await self.inner.connect(endpoint, timeout=timeout)
        try:
            if self.security is not None:
                channel = await self.security.secure(
                    channel, "initiator", expect_peer=self.expect_peer
                )
            hello = {
                "protocol": protocol.PROTOCOL_VERSION,
                "migration_id": self.migration_id,
                "token": self.token,
                "stream": True,
            }
            await channel.send(protocol.pack_json(Msg.HELLO, hello))
        except BaseException:
            await channel.close()
            raise
        return channel


class _RouteListener(Listener):
    def __init__(self, endpoint: Endpoint, close: Callable[[], None]) -> None:
        self._endpoint = endpoint
        self._close = close

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    async def close(self) -> None:
        self._close()


@dataclass
class IncomingStream:
    """A stream migration this agent receives."""

    id: str
    token: str
    transport: str
    handle: IncomingStreamMigration | None = None
    handler: ChannelHandler | None = None
    created: float = field(default_factory=time.monotonic)
    state: str = "pending"
    error: str | None = None
    connections: int = 0
    vm: str = ""
    """The VM's name (its ownership record's key)."""
    fence: Callable[[], Awaitable[bool]] | None = None
    """Cluster mode: the ownership claim to win before the VM counts as arrived here."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API (never includes the token)."""
        return {
            "id": self.id,
            "state": self.state,
            "error": self.error,
            "connections": self.connections,
        }


class StreamSinkTransport(Transport):
    """The destination's transport: the sink's "listener" is a route on the agent's one."""

    name = "agent-stream"

    def __init__(self, incoming: IncomingStream, endpoint: Endpoint, inner: Transport) -> None:
        super().__init__()
        vars(self).update(
            name=inner.name, max_frame_size=inner.max_frame_size, max_streams=inner.max_streams
        )
        self.incoming = incoming
        self.endpoint = endpoint

    async def listen(self, endpoint: Endpoint, handler: ChannelHandler) -> Listener:
        """Route this migration's channels to ``handler``; ``endpoint`` is the agent's."""
        self.incoming.handler = handler

        def unroute() -> None:
            self.incoming.handler = None

        return _RouteListener(self.endpoint, unroute)

    async def connect(self, endpoint: Endpoint, *, timeout: float = 10.0) -> Channel:
        """Not offered: the destination only listens."""
        msg = "the destination side of a stream migration does not connect"
        raise TransportError(msg)


async def route_channel(
    streams: dict[str, IncomingStream], channel: Channel, hello: dict[str, Any]
) -> None:
    """Hand a stream connection to its migration's sink, after checking id and token."""
    incoming = streams.get(str(hello.get("migration_id")))
    if incoming is None or not hmac.compare_digest(str(hello.get("token", "")), incoming.token):
        msg = "unknown stream migration id or wrong token"
        raise MigrationError(msg)
    if incoming.handler is None or incoming.state not in ("pending", "active"):
        msg = f"stream migration {incoming.id} is {incoming.state}, not receiving"
        raise MigrationError(msg)
    incoming.state = "active"
    incoming.connections += 1
    await incoming.handler(channel)


async def finish_incoming(incoming: IncomingStream, succeeded: bool, error: str | None) -> None:
    """Close the sink; on failure the driver discards what it prepared.

    In cluster mode a success counts only once this host won the VM's ownership record
    (the fence taken at prepare). When another host owns it, the migration ends
    ``aborted`` and this raises MigrationError saying so; the driver is still told that
    the stream succeeded, so that it does not discard a guest that may be the only copy.
    """
    if incoming.state in ("completed", "aborted"):
        return
    handle = incoming.handle
    lost: str | None = None
    if succeeded and incoming.fence is not None:
        lost = await _claim(incoming, incoming.fence)
    incoming.state = "completed" if succeeded and lost is None else "aborted"
    incoming.error = lost if succeeded else (error or "the source reported a failure")
    if handle is not None:
        try:
            await handle.finish(succeeded)
        except Exception as exc:
            incoming.error = f"{incoming.error or ''}; cleanup failed: {exc}".lstrip("; ")
            raise
    if lost is not None:
        raise MigrationError(lost)


async def _claim(incoming: IncomingStream, fence: Callable[[], Awaitable[bool]]) -> str | None:
    """Win the VM's ownership record for this host: None, or why it was not won."""
    try:
        if await fence():
            return None
        why = "another host owns it now (the ownership compare-and-swap was lost)"
    except NovaCronError as exc:
        why = f"its ownership record could not be claimed ({exc})"
    log.warning("incoming stream migration %s of %s: %s", incoming.id, incoming.vm, why)
    return (
        f"VM {incoming.vm} arrived, but {why}; it does not count as migrated here: check "
        "the ownership record (novacron status --cluster) before using this copy"
    )


def choose_transport(
    plugins: NovaCronPluginManager, settings: MigrationSettings, destination: Endpoint
) -> str:
    """The transport as the planner chooses it: the setting, the hook, the default.

    Only the transport: the hypervisor's stream needs no page codec and paces itself.
    """
    registry = plugins.transports
    if settings.transport is not None:
        registry.entry(settings.transport)  # raises naming the known ones
        return settings.transport
    decided = plugins.call_decision(
        "novacron_choose_transport", destination=destination, settings=settings
    )
    if decided is not None:
        registry.entry(str(decided))
        return str(decided)
    return registry.default_name()


# -- the agent's side ----------------------------------------------------------------------
async def start_outgoing(
    service: AgentService, vm: VM, settings: MigrationSettings, dest_url: str
) -> OutgoingMigration:
    """Prepare the destination, then migrate in the background (see the module docstring)."""
    from novacron_sdk.agent.service import OutgoingMigration

    migration_id = uuid.uuid4().hex[:12]
    transport_name = choose_transport(
        service.plugins, settings, Endpoint(host=urlsplit(dest_url).hostname or "127.0.0.1")
    )
    offer = await service.driver.stream_migration_offer(vm.id)
    auth = service._auth()
    async with AgentClient(dest_url, auth=auth) as dest:
        prepared = await dest.prepare_incoming_stream(
            migration_id=migration_id, offer=offer, transport=transport_name
        )
        try:
            ticket = StreamMigrationTicket.model_validate(prepared.get("ticket"))
            token = str(prepared["token"])
        except (KeyError, ValidationError) as exc:
            await dest.finish_incoming_stream(migration_id, succeeded=False, error=str(exc))
            msg = f"agent {dest_url} answered the stream prepare without a valid ticket: {exc}"
            raise MigrationError(msg) from exc
    run = StreamMigrationRun(
        plugins=service.plugins,
        settings=settings,
        transport_name=transport_name,
        vm=vm.name,
        source_name=service.name,
        destination_name=str(prepared.get("host", dest_url)),
        migration_id=migration_id,
        on_event=lambda event: service._record_event(migration_id, event),
        rollback_fence=(
            source_fence(service.state_store, vm.name, service.name)
            if service.state_store is not None
            else None
        ),
    )
    mig = OutgoingMigration(id=migration_id, vm=vm.id, destination=dest_url, engine=run)
    service.outgoing[migration_id] = mig
    transport = StreamSourceTransport(
        service.new_transport(transport_name),
        migration_id=migration_id,
        token=token,
        security=service.security,
        expect_peer=getattr(auth, "peer_fingerprint", None),
        streams=settings.streams,
    )
    mig.task = asyncio.create_task(_run_outgoing(service, mig, run, ticket, transport))
    return mig


async def _run_outgoing(
    service: AgentService,
    mig: OutgoingMigration,
    run: StreamMigrationRun,
    ticket: StreamMigrationTicket,
    transport: StreamSourceTransport,
) -> None:
    succeeded = False
    try:
        mig.report = await run.run(service.driver, mig.vm, ticket, transport)
        succeeded = True
    except (NovaCronError, OSError) as exc:
        mig.error = str(exc)
        service.metrics.migration_failed()
        log.warning("stream migration %s of %s failed: %s", mig.id, mig.vm, mig.error)
    finally:
        refused: str | None = None
        try:
            async with AgentClient(mig.destination, auth=service._auth()) as dest:
                answer = await dest.finish_incoming_stream(
                    mig.id, succeeded=succeeded, error=mig.error
                )
            if succeeded and answer.get("state") != "completed":  # a retried finish
                refused = str(answer.get("error") or f"it is {answer.get('state')}")
        except MigrationError as exc:
            # The destination refused the VM: in cluster mode, another host owns it.
            refused = str(exc) if succeeded else None
            if not succeeded:
                log.warning(
                    "could not tell %s how migration %s ended: %s", mig.destination, mig.id, exc
                )
        except (NovaCronError, OSError) as exc:
            # The source's driver already discarded what the destination had prepared.
            log.warning(
                "could not tell %s how migration %s ended: %s", mig.destination, mig.id, exc
            )
        if succeeded and refused is not None:
            _refused(run, mig, refused)
            service.metrics.migration_failed()
        elif succeeded and mig.report is not None:
            service.metrics.migration_done(mig.report)
        mig.done.set()
        async with mig.changed:
            mig.changed.notify_all()


def _refused(run: StreamMigrationRun, mig: OutgoingMigration, reason: str) -> None:
    """The hypervisor completed, but the destination did not take the VM over."""
    mig.error = f"the destination did not take VM {run.vm} over: {reason}"
    log.warning("stream migration %s of %s: %s", mig.id, run.vm, mig.error)
    run.refused(mig.error)  # the run reported completion before the destination's claim


async def prepare_incoming(
    service: AgentService, migration_id: str, offer: StreamMigrationOffer, transport: str
) -> dict[str, Any]:
    """Let the driver prepare behind a route on the agent's migration listener."""
    service.driver.require(DriverFeature.STREAM_MIGRATION_SINK)
    if migration_id in service.incoming_streams or migration_id in service.incoming:
        msg = f"migration {migration_id} is already being received here"
        raise InvalidStateError(msg)
    listener = await service._listener(transport)
    endpoint = service.advertised(listener.endpoint)
    # Cluster mode: remember the owner record now (the source's); the VM counts as arrived
    # only if this host wins it at finish, as for page-level migrations.
    fence = (
        await destination_fence(service.state_store, offer.vm.name, service.name)
        if service.state_store is not None
        else None
    )
    incoming = IncomingStream(
        id=migration_id,
        token=secrets.token_hex(16),
        transport=transport,
        vm=offer.vm.name,
        fence=fence,
    )
    service.incoming_streams[migration_id] = incoming
    try:
        incoming.handle = await service.driver.prepare_stream_migration(
            offer,
            transport=StreamSinkTransport(incoming, endpoint, service.new_transport(transport)),
            listen=endpoint,
            session=migration_id,
        )
    except BaseException:
        del service.incoming_streams[migration_id]
        raise
    service.metrics.incoming.inc()
    return {
        "ticket": incoming.handle.ticket.model_dump(mode="json"),
        "token": incoming.token,
        "host": service.name,
    }


async def reap(streams: dict[str, IncomingStream], max_age_s: float) -> None:
    """Discard prepared stream migrations whose source vanished before finishing them."""
    now = time.monotonic()
    for incoming in list(streams.values()):
        if incoming.state not in ("pending", "active") or now - incoming.created < max_age_s:
            continue
        handle = incoming.handle
        try:
            settled = handle is not None and await handle.settled()
        except Exception:
            # The reaper must outlive one driver's failure; it asks again next time.
            log.exception("cannot tell whether incoming stream migration %s ended", incoming.id)
            continue
        if settled:
            log.warning("incoming stream migration %s: the source never finished it", incoming.id)
            with contextlib.suppress(NovaCronError, OSError):
                await finish_incoming(incoming, False, "the source never finished the migration")
