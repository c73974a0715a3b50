"""An async httpx client for one agent's control API; errors map back to the SDK hierarchy."""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from novacron_sdk import errors
from novacron_sdk.compute.interface import StreamMigrationOffer
from novacron_sdk.errors import NovaCronError, TransportError
from novacron_sdk.hypervisors.interface import MigrationSourceInfo
from novacron_sdk.models import VM, Host, VMSpec

# Every SDK error by name: the agent's answers carry the kind of the error it raised.
_BY_KIND: dict[str, type[NovaCronError]] = {
    kind.__name__: kind
    for kind in vars(errors).values()
    if isinstance(kind, type) and issubclass(kind, NovaCronError)
}


def _segment(value: str) -> str:
    """One path segment: an id quoted whole, so "?", "#" or "/" in it cannot change the
    resource addressed (``destroy_vm("web?force")`` must not destroy ``web``)."""
    if not value:
        msg = "an empty id names no VM or migration; give its id or name"
        raise NovaCronError(msg)
    return quote(str(value), safe="")


class AgentClient:
    """Talks to ``http(s)://host:port`` of one agent. Use as an async context manager."""

    def __init__(self, url: str, *, timeout: float = 30.0, auth: httpx.Auth | None = None) -> None:
        self.url = url.rstrip("/")
        # ``auth`` authenticates to agents that run with security enabled (see the
        # "agent.security" init component); it also checks that each answer is the agent's.
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, auth=auth)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            msg = f"agent {self.url} is unreachable ({type(exc).__name__}: {exc}); is it running?"
            raise TransportError(msg) from exc
        if response.status_code >= 300:  # redirects are not followed: none is expected
            raise self._error(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _error(self, response: httpx.Response) -> NovaCronError:
        """The SDK error for an error response, its message prefixed with this agent's URL."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            reason = response.text.strip() or response.reason_phrase
            body = {"error": f"{reason} (HTTP {response.status_code})"}
        kind = _BY_KIND.get(str(body.get("kind")), NovaCronError)
        text = str(body.get("error") or body)
        if text.startswith("agent "):
            # Another agent's error relayed by this one (the destination of a migration, say):
            # "agent A: agent B is unreachable" would read as one agent repeated.
            return kind(f"agent {self.url} reports: {text}")
        return kind(f"agent {self.url}: {text}")

    async def health(self) -> dict[str, Any]:
        """The unauthenticated health check."""
        return dict(await self._call("GET", "/health"))

    async def status(self) -> dict[str, Any]:
        """Host, components and counts."""
        return dict(await self._call("GET", "/v1/status"))

    async def host(self) -> Host:
        """The agent's host."""
        return Host.model_validate(await self._call("GET", "/v1/host"))

    async def list_vms(self) -> list[VM]:
        """VMs on the host."""
        return [VM.model_validate(v) for v in await self._call("GET", "/v1/vms")]

    async def get_vm(self, vm_id: str) -> VM:
        """One VM."""
        return VM.model_validate(await self._call("GET", f"/v1/vms/{_segment(vm_id)}"))

    async def create_vm(self, spec: VMSpec) -> VM:
        """Create a VM on the host."""
        return VM.model_validate(
            await self._call("POST", "/v1/vms", json=spec.model_dump(mode="json"))
        )

    async def vm_action(self, vm_id: str, action: str) -> VM:
        """start, stop, reboot, pause or resume."""
        return VM.model_validate(await self._call("POST", f"/v1/vms/{_segment(vm_id)}/{action}"))

    async def destroy_vm(self, vm_id: str) -> None:
        """Destroy a VM."""
        await self._call("DELETE", f"/v1/vms/{_segment(vm_id)}")

    async def vm_digest(self, vm_id: str) -> str:
        """Digest of the VM's whole memory."""
        return str((await self._call("GET", f"/v1/vms/{_segment(vm_id)}/digest"))["digest"])

    async def start_migration(
        self, vm: str, destination: str, settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Start migrating ``vm`` to the agent at ``destination``; returns the migration."""
        body = {"vm": vm, "destination": destination, "settings": settings or {}}
        return dict(await self._call("POST", "/v1/migrations", json=body))

    async def migration(self, migration_id: str) -> dict[str, Any]:
        """A migration's state and, when done, its report."""
        return dict(await self._call("GET", f"/v1/migrations/{_segment(migration_id)}"))

    async def migration_events(
        self, migration_id: str, *, after: int = 0, wait_s: float = 5.0
    ) -> dict[str, Any]:
        """Events after number ``after``, waiting up to ``wait_s`` for new ones."""
        return dict(
            await self._call(
                "GET",
                f"/v1/migrations/{_segment(migration_id)}/events",
                params={"after": after, "wait": wait_s},
                timeout=wait_s + 30,
            )
        )

    async def cancel_migration(self, migration_id: str) -> dict[str, Any]:
        """Cancel a running migration (it rolls back)."""
        return dict(await self._call("DELETE", f"/v1/migrations/{_segment(migration_id)}"))

    async def prepare_incoming(
        self,
        *,
        migration_id: str,
        info: MigrationSourceInfo,
        transport: str,
        codec: str,
        verify: str,
    ) -> dict[str, Any]:
        """Ask this agent to receive a VM; returns its migration endpoint and a token."""
        body = {
            "migration_id": migration_id,
            "info": info.model_dump(mode="json"),
            "transport": transport,
            "codec": codec,
            "verify": verify,
        }
        return dict(await self._call("POST", "/v1/incoming", json=body))

    async def incoming_state(self, migration_id: str) -> dict[str, Any]:
        """State of an incoming migration: pending, active or aborted."""
        return dict(await self._call("GET", f"/v1/incoming/{_segment(migration_id)}"))

    async def prepare_incoming_stream(
        self, *, migration_id: str, offer: StreamMigrationOffer, transport: str
    ) -> dict[str, Any]:
        """Ask this agent to receive a VM by its hypervisor's stream; returns ticket and token."""
        body = {
            "migration_id": migration_id,
            "offer": offer.model_dump(mode="json"),
            "transport": transport,
        }
        return dict(await self._call("POST", "/v1/incoming-streams", json=body))

    async def finish_incoming_stream(
        self, migration_id: str, *, succeeded: bool, error: str | None = None
    ) -> dict[str, Any]:
        """Tell this agent how the stream migration ended (it cleans up unless it succeeded)."""
        body = {"succeeded": succeeded, "error": error}
        path = f"/v1/incoming-streams/{_segment(migration_id)}/finish"
        return dict(await self._call("POST", path, json=body))

    async def incoming_stream_state(self, migration_id: str) -> dict[str, Any]:
        """State of an incoming stream migration: pending, active, completed or aborted."""
        return dict(await self._call("GET", f"/v1/incoming-streams/{_segment(migration_id)}"))
