"""Error answers of the agent's control API and how AgentClient words them (in-process, fast)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from novacron_sdk.agent.app import create_app
from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.service import AgentService
from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.errors import NovaCronError, QuotaExceededError
from novacron_sdk.hypervisors.interface import MigrationSourceInfo
from novacron_sdk.models import VM, VMSpec
from novacron_sdk.plugin.manager import build_plugin_manager

URL = "http://agent.test"


class BuggyDriver(SimDriver):
    """A sim whose create_vm has a bug (an exception outside the SDK's hierarchy)."""

    async def create_vm(self, spec: VMSpec) -> VM:
        raise KeyError("slot")


def client_on(transport: httpx.AsyncBaseTransport, url: str = URL) -> AgentClient:
    client = AgentClient(url)
    client._http = httpx.AsyncClient(base_url=url, transport=transport)
    return client


@pytest.fixture
async def api() -> AsyncIterator[tuple[AgentService, AgentClient]]:
    driver = BuggyDriver({"host_name": "buggy", "memory_mib": 4096})
    service = AgentService(plugins=build_plugin_manager(autoload=False), driver=driver, name="t")
    app = create_app(service)
    async with client_on(httpx.ASGITransport(app=app)) as client:
        yield service, client
    await driver.close()


async def test_a_bug_in_a_handler_is_a_500_with_type_and_message(api, caplog) -> None:
    service, client = api
    response = await client._http.post("/v1/vms", json={"name": "vm"})
    assert response.status_code == 500
    body = response.json()
    assert body["kind"] == "KeyError"
    assert body["error"].startswith("unexpected KeyError in the agent: 'slot'; ")
    assert "the agent's log has the traceback" in body["error"]
    assert "POST /v1/vms failed unexpectedly" in caplog.text
    assert "Traceback" in caplog.text
    metrics = service.metrics.render()
    text = metrics.decode() if isinstance(metrics, bytes) else metrics
    assert 'novacron_api_requests_total{method="POST",status="500"} 1.0' in text
    with pytest.raises(NovaCronError, match=rf"^agent {URL}: unexpected KeyError in the agent"):
        await client.create_vm(VMSpec(name="vm"))
    assert (await client.health())["status"] == "ok"  # the agent keeps serving


async def test_vm_bigger_than_the_machine_is_a_clean_409(api, small_machine) -> None:
    _, client = api
    info = MigrationSourceInfo(spec=VMSpec(name="big", memory_mib=1024), page_count=1024 * 256)
    response = await client._http.post(
        "/v1/incoming",
        json={
            "migration_id": "m1",
            "info": info.model_dump(mode="json"),
            "transport": "tcp",
            "codec": "zlib",
        },
    )
    assert response.status_code == 409
    assert response.json()["kind"] == "QuotaExceededError"
    assert "cannot allocate 1024 MiB" in response.json()["error"]
    with pytest.raises(QuotaExceededError, match=rf"^agent {URL}: this machine cannot allocate"):
        await client.prepare_incoming(
            migration_id="m2", info=info, transport="tcp", codec="zlib", verify="pages"
        )


def answering(status: int, **kwargs: Any) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, **kwargs)

    return httpx.MockTransport(handler)


async def test_an_error_relayed_from_another_agent_is_not_a_doubled_prefix() -> None:
    relayed = {
        "error": "agent http://127.0.0.1:9 is unreachable (ConnectError: refused); is it running?",
        "kind": "NovaCronError",
    }
    async with client_on(answering(502, json=relayed), "http://127.0.0.1:8471") as client:
        with pytest.raises(NovaCronError) as caught:
            await client.start_migration("vm", "http://127.0.0.1:9")
    assert str(caught.value) == (
        "agent http://127.0.0.1:8471 reports: agent http://127.0.0.1:9 is unreachable "
        "(ConnectError: refused); is it running?"
    )


async def test_the_agents_own_errors_keep_the_url_prefix() -> None:
    own = {"error": "no VM 'ghost' on sim host 'a'", "kind": "NotFoundError"}
    async with client_on(answering(404, json=own)) as client:
        with pytest.raises(NovaCronError, match=rf"^agent {URL}: no VM 'ghost'"):
            await client.get_vm("ghost")


async def test_an_error_without_a_json_body_names_the_status() -> None:
    async with client_on(answering(500, text="Internal Server Error")) as client:
        with pytest.raises(NovaCronError) as caught:
            await client.list_vms()
    assert str(caught.value) == f"agent {URL}: Internal Server Error (HTTP 500)"
    async with client_on(answering(503)) as client:
        with pytest.raises(NovaCronError, match=r"Service Unavailable \(HTTP 503\)$"):
            await client.list_vms()
