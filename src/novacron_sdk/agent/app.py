"""The agent's HTTP control API (ASGI, FastAPI): VMs, migrations, status, metrics.

Every error body is ``{"error": "<what is wrong and what to do>", "kind": "<ErrorClass>"}``;
bad input gets a 4xx naming the field. An unexpected exception (a bug) still gets that body,
with status 500 and the exception's type and message; its traceback goes to the agent's log.
The OpenAPI schema is served at ``/openapi.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from novacron_sdk.__about__ import __version__
from novacron_sdk.agent.service import AgentService
from novacron_sdk.cluster.ownership import release_vm
from novacron_sdk.compute.interface import StreamMigrationOffer
from novacron_sdk.errors import (
    ConfigError,
    DriverError,
    FeatureNotSupportedError,
    InvalidStateError,
    MigrationError,
    NotFoundError,
    NovaCronError,
    PluginError,
    QuotaExceededError,
    TransportError,
    UnknownNameError,
)
from novacron_sdk.hypervisors.interface import MigrationSourceInfo
from novacron_sdk.models import VM, Host, VMSpec

log = logging.getLogger(__name__)

StatusProvider = Callable[[], list[dict[str, Any]]]

_STATUS: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404),
    (UnknownNameError, 400),
    (InvalidStateError, 409),
    (QuotaExceededError, 409),
    (FeatureNotSupportedError, 400),
    (ConfigError, 400),
    (PluginError, 400),
    (MigrationError, 409),
    (DriverError, 502),
    # Another host (a migration's destination) could not be reached or failed to answer.
    (TransportError, 502),
    (NovaCronError, 500),
]
# A DriverError with one of these codes is a request the driver refused before asking its
# provider (an unknown spec.extra key, malformed domain XML, a missing image): invalid input,
# answered 422 like a body that fails validation, not 502 like a provider failure.
INVALID_INPUT_CODES = frozenset({"InvalidParameter", "MissingParameter"})


def _status_of(exc: NovaCronError) -> int:
    if isinstance(exc, DriverError) and exc.code in INVALID_INPUT_CODES:
        return 422
    return next(code for cls, code in _STATUS if isinstance(exc, cls))


class MigrationRequest(BaseModel):
    """Start a live migration of ``vm`` to the agent at ``destination``."""

    model_config = ConfigDict(extra="forbid")

    vm: str = Field(min_length=1, description="VM id or name on this host.")
    destination: AnyHttpUrl = Field(description="Destination agent URL, e.g. http://h:8471.")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="MigrationSettings fields overriding the defaults."
    )


class IncomingRequest(BaseModel):
    """Prepare to receive a VM (called by the source agent)."""

    model_config = ConfigDict(extra="forbid")

    migration_id: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    info: MigrationSourceInfo
    transport: str = Field(min_length=1)
    codec: str = Field(min_length=1)
    verify: Literal["pages", "full"] = "pages"


class IncomingStreamRequest(BaseModel):
    """Prepare to receive a VM by its hypervisor's own stream (called by the source agent)."""

    model_config = ConfigDict(extra="forbid")

    migration_id: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    offer: StreamMigrationOffer
    transport: str = Field(min_length=1)


class StreamFinish(BaseModel):
    """How a stream migration ended at the source."""

    model_config = ConfigDict(extra="forbid")

    succeeded: bool
    error: str | None = None


MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""The largest request body the control API reads (its largest, a stream migration's domain
XML, is far smaller); a larger one is answered 413 before it is held in memory."""


class RequestSizeLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413, by Content-Length or as they come.

    Around the control API's routes (the security plugin's wrapper, outside it, bounds its
    own reads). A body within the limit is read here and handed on unchanged.
    """

    def __init__(self, app: Any, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Check the declared size, then read at most ``max_bytes`` before passing on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away: the app sees that as it would have
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def again() -> Any:
            return replay.pop() if replay else await receive()

        await self.app(scope, again, send)

    async def _too_large(self, send: Any) -> None:
        body = (
            f'{{"error": "request body over {self.max_bytes} bytes: send less", '
            '"kind": "ValidationError"}'
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _error(exc: Exception, status: int) -> JSONResponse:
    return JSONResponse({"error": str(exc), "kind": type(exc).__name__}, status_code=status)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
    detail = str(exc) or "(no message)"
    text = (
        f"unexpected {type(exc).__name__} in the agent: {detail}; this looks like a bug: "
        "the agent's log has the traceback, please report it"
    )
    return JSONResponse({"error": text, "kind": type(exc).__name__}, status_code=500)


def _validation_text(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(service: AgentService, status_provider: StatusProvider | None = None) -> FastAPI:
    """The ASGI app for ``service``."""
    app = FastAPI(
        title="NovaCron agent",
        version=__version__,
        description="Control API of one NovaCron host: VMs, live migrations, status, metrics.",
    )

    app.add_middleware(RequestSizeLimit)

    @app.exception_handler(NovaCronError)
    async def _novacron_error(request: Request, exc: NovaCronError) -> JSONResponse:
        return _error(exc, _status_of(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes and methods answer in the same shape as every other error.
        if exc.status_code == 404:
            text = f"no route {request.method} {request.url.path}; the API is listed at /docs"
        elif exc.status_code == 405:
            text = f"{request.method} is not allowed on {request.url.path}"
        else:
            text = str(exc.detail)
        return JSONResponse(
            {"error": text, "kind": "HTTPError"}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        text = f"invalid request: {_validation_text(list(exc.errors()))}"
        return JSONResponse({"error": text, "kind": "ValidationError"}, status_code=422)

    @app.exception_handler(ValidationError)
    async def _model_invalid(request: Request, exc: ValidationError) -> JSONResponse:
        text = f"invalid {exc.title}: {_validation_text(list(exc.errors()))}"
        return JSONResponse({"error": text, "kind": "ValidationError"}, status_code=422)

    @app.middleware("http")
    async def _count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug: answer with what failed, not a bare 500
            response = _unexpected(request, exc)
        service.metrics.requests.labels(request.method, str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness only: reveals nothing about the host."""
        return {"status": "ok"}

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        """Host, init components, VM and migration counts."""
        vms = await service.driver.list_vms()
        return {
            "host": (await service.host()).model_dump(mode="json"),
            "components": status_provider() if status_provider else [],
            "vms": len(vms),
            "migrations": len(service.outgoing),
            "incoming": len(service.incoming),
            "version": __version__,
        }

    @app.get("/v1/host")
    async def host() -> Host:
        """This host and its capacity."""
        return await service.host()

    @app.get("/v1/vms")
    async def list_vms() -> list[VM]:
        """Every VM on this host."""
        vms = await service.driver.list_vms()
        service.metrics.vms.set(len(vms))
        return vms

    @app.post("/v1/vms", status_code=201)
    async def create_vm(spec: VMSpec) -> VM:
        """Create and start a VM."""
        return await service.driver.create_vm(spec)

    @app.get("/v1/vms/{vm_id}")
    async def get_vm(vm_id: str) -> VM:
        """One VM by id or name."""
        return await service.driver.get_vm(vm_id)

    @app.post("/v1/vms/{vm_id}/{action}")
    async def vm_action(
        vm_id: str, action: Literal["start", "stop", "reboot", "pause", "resume"]
    ) -> VM:
        """Change a VM's power state."""
        vm = await service.driver.get_vm(vm_id)
        method = getattr(service.driver, action)
        result: VM = await method(vm.id)
        return result

    @app.delete("/v1/vms/{vm_id}", status_code=204)
    async def destroy_vm(vm_id: str) -> Response:
        """Destroy a VM, and release its ownership record (cluster mode)."""
        vm = await service.driver.get_vm(vm_id)
        await service.driver.destroy(vm.id)
        if service.state_store is not None:
            try:
                await release_vm(service.state_store, vm.name, service.name)
            except (NovaCronError, OSError) as exc:
                # The VM is gone all the same; a later membership pass retries if it knew the VM.
                log.warning("VM %s destroyed; releasing its owner record failed: %s", vm.name, exc)
        return Response(status_code=204)

    @app.get("/v1/vms/{vm_id}/digest")
    async def vm_digest(vm_id: str) -> dict[str, str]:
        """Digest of the VM's whole memory (drivers with ``ex_memory_digest``)."""
        return {"vm": vm_id, "digest": await service.vm_digest(vm_id)}

    @app.post("/v1/migrations", status_code=202)
    async def start_migration(body: MigrationRequest) -> dict[str, Any]:
        """Start a live migration; follow it with the events endpoint."""
        mig = await service.start_migration(body.vm, str(body.destination), body.settings)
        return mig.as_dict()

    @app.get("/v1/migrations")
    async def list_migrations() -> list[dict[str, Any]]:
        """Migrations this agent ran or runs as the source."""
        return [m.as_dict() for m in service.outgoing.values()]

    @app.get("/v1/migrations/{migration_id}")
    async def get_migration(migration_id: str) -> dict[str, Any]:
        """A migration's phase and, when done, its report."""
        return service.get_outgoing(migration_id).as_dict()

    @app.get("/v1/migrations/{migration_id}/events")
    async def migration_events(
        migration_id: str,
        after: int = Query(default=0, ge=0),
        wait: float = Query(default=0.0, ge=0, le=60),
    ) -> dict[str, Any]:
        """Events numbered after ``after``; waits up to ``wait`` seconds for new ones."""
        events, newest = await service.events(migration_id, after, wait)
        mig = service.get_outgoing(migration_id)
        return {
            "events": [e.model_dump(mode="json") for e in events],
            "next": newest,
            "done": mig.done.is_set(),
        }

    @app.delete("/v1/migrations/{migration_id}")
    async def cancel_migration(migration_id: str) -> dict[str, Any]:
        """Cancel; the VM keeps running at the source unless the switch-over was committed."""
        mig = service.get_outgoing(migration_id)
        mig.engine.cancel()
        return mig.as_dict()

    @app.post("/v1/incoming", status_code=201)
    async def prepare_incoming(body: IncomingRequest) -> dict[str, Any]:
        """Prepare a sink and return the migration endpoint with a one-time token."""
        return await service.prepare_incoming(
            migration_id=body.migration_id,
            info=body.info,
            transport=body.transport,
            codec=body.codec,
            verify=body.verify,
        )

    @app.get("/v1/incoming/{migration_id}")
    async def incoming_state(migration_id: str) -> dict[str, Any]:
        """pending, active or aborted."""
        return service.get_incoming(migration_id).as_dict()

    @app.post("/v1/incoming-streams", status_code=201)
    async def prepare_incoming_stream(body: IncomingStreamRequest) -> dict[str, Any]:
        """Define the VM here and route its stream to the driver; returns a ticket and token."""
        return await service.prepare_incoming_stream(
            migration_id=body.migration_id, offer=body.offer, transport=body.transport
        )

    @app.get("/v1/incoming-streams/{migration_id}")
    async def incoming_stream_state(migration_id: str) -> dict[str, Any]:
        """pending, active, completed or aborted (with the error)."""
        return service.get_incoming_stream(migration_id).as_dict()

    @app.post("/v1/incoming-streams/{migration_id}/finish")
    async def finish_incoming_stream(migration_id: str, body: StreamFinish) -> dict[str, Any]:
        """The source reports the end; unless it succeeded, what was prepared is discarded."""
        incoming = await service.finish_incoming_stream(
            migration_id, succeeded=body.succeeded, error=body.error
        )
        return incoming.as_dict()

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        service.metrics.vms.set(len(await service.driver.list_vms()))
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    app.state.started = time.time()
    return app
