"""The agent's control API and its client against bad and unusual requests.

Each test failed before its fix (found by an independent review). The agent runs in-process
with the sim driver behind httpx's ASGI transport; nothing is mocked except that the event
cap test drives the service's event log directly with a stand-in engine (said where used).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from novacron_sdk.agent.app import create_app
from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.service import AgentService, OutgoingMigration
from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.errors import NovaCronError, UnknownNameError
from novacron_sdk.hypervisors.interface import MigrationSourceInfo
from novacron_sdk.migration.models import MigrationEvent, MigrationPhase
from novacron_sdk.models import VMSpec, VMState
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.waiting import eventually

URL = "http://agent.test"
IDLE = {"workload": {"pattern": "idle"}}


@pytest.fixture
async def api() -> AsyncIterator[tuple[AgentService, AgentClient, httpx.AsyncClient]]:
    driver = SimDriver({"host_name": "a", "memory_mib": 4096})
    service = AgentService(plugins=build_plugin_manager(autoload=False), driver=driver, name="a")
    service.url = URL
    transport = httpx.ASGITransport(app=create_app(service))
    client = AgentClient(URL)
    await client._http.aclose()
    client._http = httpx.AsyncClient(base_url=URL, transport=transport)
    async with client, httpx.AsyncClient(base_url=URL, transport=transport) as http:
        yield service, client, http
    await service.close()


# 1. AgentClient puts ids into the URL unquoted: '?', '#', '/' change which resource is hit.
async def test_client_destroy_with_query_char_destroys_another_vm(api) -> None:
    _, client, _ = api
    await client.create_vm(VMSpec(name="web", memory_mib=64, extra=IDLE))
    with pytest.raises(NovaCronError):
        await client.destroy_vm("web?force")  # no VM has this name
    assert [vm.name for vm in await client.list_vms()] == ["web"]


async def test_client_trailing_slash_is_an_sdk_error(api) -> None:
    _, client, _ = api
    await client.create_vm(VMSpec(name="web", memory_mib=64, extra=IDLE))
    with pytest.raises(NovaCronError):  # today: pydantic ValidationError (307 taken as success)
        await client.get_vm("web/")


# 2. Unknown routes / methods answer {"detail": ...}, not the documented {"error", "kind"}.
async def test_unknown_route_has_documented_error_body(api) -> None:
    _, _, http = api
    response = await http.get("/v1/nope")
    assert response.status_code == 404
    assert set(response.json()) == {"error", "kind"}, response.json()


# 3. An unreachable destination (bad input) is answered 500, documented as "a bug".
async def test_unreachable_destination_is_not_a_500(api) -> None:
    _, client, http = api
    await client.create_vm(VMSpec(name="web", memory_mib=64, extra=IDLE))
    r = await http.post("/v1/migrations", json={"vm": "web", "destination": "http://127.0.0.1:1"})
    assert r.status_code < 500 or r.status_code == 502, (r.status_code, r.json())


# 4. Unknown plugin name: agent says UnknownNameError (400), client raises a bare NovaCronError.
async def test_client_maps_unknown_name_error(api) -> None:
    _, client, _ = api
    await client.create_vm(VMSpec(name="web", memory_mib=64, extra=IDLE))
    with pytest.raises(UnknownNameError):
        await client.start_migration("web", "http://127.0.0.1:1", {"transport": "nope"})


# 5. Invalid sim spec.extra (documented as 422) is answered 502 "driver failure".
async def test_bad_extra_is_422(api) -> None:
    _, _, http = api
    r = await http.post("/v1/vms", json={"name": "x", "memory_mib": 64, "extra": {"colour": 1}})
    assert r.status_code == 422, (r.status_code, r.json())


# 6. Event numbering broke once MAX_EVENTS_KEPT (2000) was exceeded: events were skipped and
#    'next' stopped advancing, so a follower (migrate_via_agents/_follow) never saw new ones.
class _Engine:
    """A stand-in for a running engine: the test records events itself."""

    phase = MigrationPhase.PRECOPY
    report = None

    def cancel(self) -> None: ...


def _event(i: int) -> MigrationEvent:
    return MigrationEvent(
        migration_id="m", vm="v", kind="progress", phase=MigrationPhase.PRECOPY, message=str(i)
    )


async def test_events_past_the_cap_are_not_lost(api) -> None:
    service, _, http = api
    mig = OutgoingMigration(id="m", vm="v", destination="http://b", engine=_Engine())  # type: ignore[arg-type]
    service.outgoing["m"] = mig
    seen: list[str] = []
    after = 0
    produced = 0
    for burst in (1990, 30, 5):
        for _ in range(burst):
            service._record_event("m", _event(produced))
            produced += 1
        body = (await http.get("/v1/migrations/m/events", params={"after": after})).json()
        seen += [e["message"] for e in body["events"]]
        after = body["next"]
    await asyncio.sleep(0)
    missing = sorted(set(map(str, range(produced))) - set(seen), key=int)
    assert not missing, f"{len(missing)} events never delivered, e.g. {missing[:3]}; next={after}"


# 7. Two concurrent POST /v1/incoming with one migration_id: both succeed; the first sink is
#    overwritten in service.incoming and leaks (a 'migrating' VM nobody reaps or can destroy).
async def test_concurrent_prepare_with_same_id_is_refused(api) -> None:
    service, _, http = api

    def body(name: str) -> dict:
        info = MigrationSourceInfo(spec=VMSpec(name=name, memory_mib=64), page_count=64 * 256)
        return {
            "migration_id": "dup",
            "info": info.model_dump(mode="json"),
            "transport": "tcp",
            "codec": "zlib",
        }

    r1, r2 = await asyncio.gather(
        http.post("/v1/incoming", json=body("in-1")), http.post("/v1/incoming", json=body("in-2"))
    )
    vms = await service.driver.list_vms()
    migrating = [vm.name for vm in vms if vm.state is VMState.MIGRATING]
    assert sorted([r1.status_code, r2.status_code]) == [201, 409], (
        r1.status_code,
        r2.status_code,
        migrating,
        list(service.incoming),
    )


# 9. Request bodies had no size limit: a 300 MB body was read into memory.
async def test_a_body_over_the_limit_is_refused_before_it_is_read(api) -> None:
    from novacron_sdk.agent.app import MAX_REQUEST_BYTES

    _, _, http = api
    big = b"x" * (MAX_REQUEST_BYTES + 1)
    r = await http.post("/v1/vms", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "request body over" in r.json()["error"]

    async def chunks():  # no Content-Length: counted as it comes
        for _ in range(5):
            yield b"x" * (MAX_REQUEST_BYTES // 4)

    r = await http.post("/v1/vms", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# 8. A long-poll held the agent's shutdown for its whole wait (then a 500 to the client).
async def test_a_long_poll_answers_at_once_when_the_agent_stops(api) -> None:
    service, _, http = api
    mig = OutgoingMigration(id="m", vm="v", destination="http://b", engine=_Engine())  # type: ignore[arg-type]
    service.outgoing["m"] = mig
    # The longest wait the API allows: the bug held the poll (and the shutdown) for all of it.
    poll = asyncio.create_task(http.get("/v1/migrations/m/events", params={"after": 0, "wait": 60}))
    try:
        # Stop only once the poll is parked on the migration's condition: a poll that had not
        # got there yet would see the stop flag first and answer however stopping() behaves.
        await eventually(lambda: bool(mig.changed._waiters), "the long-poll waits for events")
        assert not poll.done()
        await service.stopping()
        # Far below the 60 s wait the bug held it for; no bound on how fast it answers.
        response = await asyncio.wait_for(poll, 20)
        assert response.status_code == 200
        assert response.json()["events"] == []
    finally:
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)
