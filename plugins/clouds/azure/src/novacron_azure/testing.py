"""A local fake of the Azure Resource Manager compute API, for tests (yours and ours).

:class:`FakeArm` serves, on 127.0.0.1, the part of ARM the ``azure`` driver uses: virtual
machines (PUT, GET, PATCH, DELETE, POST start/powerOff/deallocate/restart, lists with
``nextLink`` paging and ``statusOnly``), long-running operations through
``Azure-AsyncOperation`` and ``Location`` polling, VM sizes, images and locations, and errors
(404, 409, 429 and any other that a test injects). :class:`FakeArmTransport` routes the real
``ComputeManagementClient``'s requests for ``https://management.azure.com`` to it, so the
client's own settings stay those of production::

    with FakeArm() as arm:
        driver = AzureDriver(settings, credential=StaticTokenCredential(),
                             transport=FakeArmTransport(arm.url))
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport

from novacron_sdk.testing.http_fake import LocalHttpFake, take_fault

ARM = "https://management.azure.com"
TOKEN = "novacron-fake-arm-token"  # noqa: S105 - a fixed test token, not a secret
_VM_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.Compute/virtualMachines/(?P<name>[^/]+)(?:/(?P<action>[A-Za-z]+))?$",
    re.IGNORECASE,
)
_LIST_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)(?:/resourceGroups/(?P<rg>[^/]+))?/providers/"
    r"Microsoft\.Compute/virtualMachines$",
    re.IGNORECASE,
)
_OPERATION_PATH = re.compile(
    r"^/subscriptions/[^/]+/providers/Microsoft\.Compute/locations/[^/]+/"
    r"(?P<kind>operations|operationResults)/(?P<id>[^/]+)$",
    re.IGNORECASE,
)
_SIZES_PATH = re.compile(
    r"^/subscriptions/[^/]+/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/vmSizes$",
    re.IGNORECASE,
)
_IMAGE_VERSIONS_PATH = re.compile(
    r"^/subscriptions/[^/]+/providers/Microsoft\.Compute/locations/[^/]+/publishers/(?P<pub>[^/]+)"
    r"/artifacttypes/vmimage/offers/(?P<offer>[^/]+)/skus/(?P<sku>[^/]+)/versions$",
    re.IGNORECASE,
)
_IMAGES_PATH = re.compile(r"^/subscriptions/[^/]+/providers/Microsoft\.Compute/images$", re.I)
_LOCATIONS_PATH = re.compile(r"^/subscriptions/[^/]+/locations$", re.IGNORECASE)

SIZES = [
    {"name": "Standard_B1s", "numberOfCores": 1, "memoryInMB": 1024, "resourceDiskSizeInMB": 4096},
    {"name": "Standard_B2s", "numberOfCores": 2, "memoryInMB": 4096, "resourceDiskSizeInMB": 8192},
    {"name": "Standard_D4s_v5", "numberOfCores": 4, "memoryInMB": 16384, "resourceDiskSizeInMB": 0},
]
LOCATIONS = [
    {"name": "westeurope", "displayName": "West Europe", "metadata": {"geography": "Europe"}},
    {"name": "eastus", "displayName": "East US", "metadata": {"geography": "United States"}},
]
# Where each action leaves the VM's power state: (while running, when done).
_ACTIONS = {
    "start": ("starting", "running"),
    "poweroff": ("stopping", "stopped"),
    "deallocate": ("deallocating", "deallocated"),
    "restart": ("restarting", "running"),
}


@dataclass
class Fault:
    """Answer the next ``count`` requests whose method and path match with an ARM error."""

    status: int
    code: str
    message: str
    method: str = "*"
    path_contains: str = ""
    count: int = 1
    retry_after: str | None = None
    after: bool = False
    """Carry the request out first, then answer the error instead (a lost response)."""


@dataclass
class _Operation:
    location: str
    polls_left: int
    finish: Callable[[], None]
    vm: tuple[str, str]
    error: dict[str, str] | None = None
    done: bool = False

    def advance(self) -> None:
        """Count one poll (or one read of the VM: time passes); finish when none are left."""
        if self.polls_left > 0:
            self.polls_left -= 1
            return
        if not self.done:
            self.done = True
            if self.error is None:
                self.finish()


@dataclass
class FakeArmState:
    """Everything the fake holds; tests may read and change it (under ``lock``)."""

    subscription: str = "00000000-0000-0000-0000-000000000000"
    page_size: int = 2
    polls_per_operation: int = 1
    vms: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    power: dict[tuple[str, str], str] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    image_versions: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    operation_failures: list[dict[str, str]] = field(default_factory=list)
    operations: dict[str, _Operation] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)


class FakeArm(LocalHttpFake[FakeArmState]):
    """The fake ARM server; use it as a context manager. ``url`` is its http base URL."""

    def __init__(self, state: FakeArmState | None = None) -> None:
        state = state or FakeArmState()
        super().__init__(state, _make_handler(state))


# azure-core exports RequestsTransport through a module __getattr__, which mypy sees as Any.
class FakeArmTransport(RequestsTransport):  # type: ignore[misc]
    """The real requests transport, with ``https://management.azure.com`` sent to the fake."""

    def __init__(self, fake_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fake_url = fake_url

    def send(self, request: Any, **kwargs: Any) -> Any:
        """Rewrite the ARM host to the fake's, then send as usual."""
        original = request.url
        if original.startswith(ARM):
            request.url = self.fake_url + original[len(ARM) :]
        try:
            return super().send(request, **kwargs)
        finally:
            # The response keeps the request: pollers that follow its URL (a PUT answered
            # 200 while still provisioning) must see the ARM URL, as in production.
            request.url = original


class StaticTokenCredential:
    """A TokenCredential that hands out the token the fake expects (no identity service)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """A token valid for an hour."""
        return AccessToken(TOKEN, int(time.time()) + 3600)

    def close(self) -> None:
        """Nothing to release."""


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _make_handler(state: FakeArmState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet."""

        # -- plumbing --------------------------------------------------------------------
        muted = False  # True while carrying out a request whose response gets lost

        def _send(
            self, status: int, body: object = None, headers: dict[str, str] | None = None
        ) -> None:
            if self.muted:
                return
            payload = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-ms-request-id", uuid.uuid4().hex)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            with state.lock:
                state.requests.append((self.command, url.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, _error("InvalidAuthenticationToken", "bad bearer token"))
                    return
                fault = take_fault(state.faults, self.command, url.path)
                if fault is not None and fault.after:
                    self.muted = True
                    self._route(url.path, query, json.loads(raw) if raw else {})
                    self.muted = False
                if fault is not None:
                    extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    self._send(fault.status, _error(fault.code, fault.message), extra)
                    return
                body = json.loads(raw) if raw else {}
                self._route(url.path, query, body)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815 - http.server names

        def _route(self, path: str, query: dict[str, str], body: dict[str, Any]) -> None:
            if match := _OPERATION_PATH.match(path):
                self._operation(match["kind"].lower(), match["id"])
            elif match := _VM_PATH.match(path):
                self._vm(match["rg"], match["name"], match["action"], query, body)
            elif match := _LIST_PATH.match(path):
                self._list(path, match["rg"], query)
            elif match := _SIZES_PATH.match(path):
                self._send(200, {"value": SIZES})
            elif match := _IMAGE_VERSIONS_PATH.match(path):
                versions = state.image_versions.get((match["pub"], match["offer"], match["sku"]))
                if versions is None:
                    self._send(404, _error("NotFound", f"Artifact: VMImage was not found: {path}"))
                    return
                self._send(
                    200,
                    [{"name": v, "location": "westeurope", "id": f"{path}/{v}"} for v in versions],
                )
            elif _IMAGES_PATH.match(path):
                self._paged(path, query, state.images)
            elif _LOCATIONS_PATH.match(path):
                self._send(200, {"value": LOCATIONS})
            else:
                self._send(404, _error("InvalidResourceType", f"no route for {path}"))

        # -- long-running operations -----------------------------------------------------
        def _start_operation(
            self, key: tuple[str, str], location: str, finish: Callable[[], None]
        ) -> dict[str, str]:
            op_id = uuid.uuid4().hex
            error = state.operation_failures.pop(0) if state.operation_failures else None
            state.operations[op_id] = _Operation(
                location, state.polls_per_operation, finish, key, error
            )
            base = f"{ARM}/subscriptions/{state.subscription}/providers/Microsoft.Compute"
            return {
                "Azure-AsyncOperation": f"{base}/locations/{location}/operations/{op_id}"
                "?api-version=2024-07-01",
                "Location": f"{base}/locations/{location}/operationResults/{op_id}"
                "?api-version=2024-07-01",
                "Retry-After": "0",
            }

        def _operation(self, kind: str, op_id: str) -> None:
            op = state.operations.get(op_id)
            if op is None:
                self._send(404, _error("NotFound", f"operation {op_id} not found"))
                return
            op.advance()
            if not op.done:
                if kind == "operations":
                    self._send(200, {"name": op_id, "status": "InProgress"}, {"Retry-After": "0"})
                else:
                    self._send(202, None, {"Retry-After": "0", "Location": self.path})
                return
            if op.error is not None:
                if kind == "operations":
                    self._send(200, {"name": op_id, "status": "Failed", "error": op.error})
                else:
                    self._send(500, {"error": op.error})
                return
            if kind == "operations":
                self._send(200, {"name": op_id, "status": "Succeeded"})
            else:
                self._send(204)

        # -- virtual machines ------------------------------------------------------------
        def _view(self, key: tuple[str, str], with_status: bool) -> dict[str, Any]:
            vm: dict[str, Any] = json.loads(json.dumps(state.vms[key]))
            provisioning = vm["properties"]["provisioningState"].lower()
            if with_status:
                power = state.power[key]
                vm["properties"]["instanceView"] = {
                    "statuses": [
                        {"code": f"ProvisioningState/{provisioning}"},
                        {"code": f"PowerState/{power}", "displayStatus": f"VM {power}"},
                    ]
                }
            return vm

        def _vm(
            self,
            rg: str,
            name: str,
            action: str | None,
            query: dict[str, str],
            body: dict[str, Any],
        ) -> None:
            key = (rg.lower(), name.lower())
            exists = key in state.vms
            if self.command == "PUT" and action is None:
                if exists and self.headers.get("If-None-Match") == "*":
                    self._send(
                        412,
                        _error(
                            "PreconditionFailed",
                            f"The VM '{name}' already exists; If-None-Match: * allows only "
                            "a create.",
                        ),
                    )
                    return
                self._create(rg, name, key, body)
                return
            if not exists:
                self._send(
                    404,
                    _error(
                        "ResourceNotFound",
                        f"The Resource 'Microsoft.Compute/virtualMachines/{name}' under resource "
                        f"group '{rg}' was not found.",
                    ),
                )
                return
            if self.command == "GET":
                self._tick(key)
            if key not in state.vms:  # deleted while this request was being served
                self._send(404, _error("ResourceNotFound", f"VM '{name}' was deleted."))
                return
            vm = state.vms[key]
            if self.command == "GET" and action is None:
                with_status = query.get("$expand") == "instanceView"
                self._send(200, self._view(key, with_status))
            elif self.command == "GET" and action == "instanceView":
                self._send(200, self._view(key, True)["properties"]["instanceView"])
            elif self.command == "PATCH" and action is None:
                if "tags" in body:
                    vm["tags"] = dict(body["tags"])
                self._send(200, self._view(key, False))
            elif self.command == "DELETE" and action is None:
                vm["properties"]["provisioningState"] = "Deleting"

                def forget() -> None:
                    state.vms.pop(key, None)

                headers = self._start_operation(key, vm["location"], forget)
                self._send(202, None, {"Location": headers["Location"], "Retry-After": "0"})
            elif self.command == "POST" and action is not None and action.lower() in _ACTIONS:
                self._power_action(key, action.lower())
            else:
                self._send(405, _error("MethodNotAllowed", f"{self.command} {self.path}"))

        def _tick(self, key: tuple[str, str]) -> None:
            # Reading a VM lets time pass for its operations, as it does in Azure.
            for op in list(state.operations.values()):
                if op.vm == key and not op.done:
                    op.advance()

        def _power_action(self, key: tuple[str, str], action: str) -> None:
            vm = state.vms[key]
            if action == "restart" and state.power[key] != "running":
                self._send(
                    409,
                    _error(
                        "OperationNotAllowed",
                        f"Operation 'restart' is not allowed on VM '{vm['name']}' since the VM is "
                        f"{state.power[key]}.",
                    ),
                )
                return
            during, after = _ACTIONS[action]
            state.power[key] = during

            def finish() -> None:
                state.power[key] = after

            self._send(202, None, self._start_operation(key, vm["location"], finish))

        def _create(self, rg: str, name: str, key: tuple[str, str], body: dict[str, Any]) -> None:
            props = body.get("properties") or {}
            missing = [
                path
                for path, value in (
                    ("location", body.get("location")),
                    (
                        "properties.hardwareProfile.vmSize",
                        (props.get("hardwareProfile") or {}).get("vmSize"),
                    ),
                    (
                        "properties.storageProfile.imageReference",
                        (props.get("storageProfile") or {}).get("imageReference"),
                    ),
                )
                if not value
            ]
            if missing:
                self._send(
                    400,
                    _error(
                        "InvalidParameter", f"Required parameter '{missing[0]}' is missing (null)."
                    ),
                )
                return
            size = props["hardwareProfile"]["vmSize"]
            if size not in {s["name"] for s in SIZES}:
                self._send(
                    409,
                    _error(
                        "SkuNotAvailable",
                        f"The requested VM size '{size}' is currently not available in location "
                        f"'{body['location']}'.",
                    ),
                )
                return
            if key in state.vms:
                state.vms[key]["tags"] = dict(body.get("tags") or {})
                self._send(200, self._view(key, False))
                return
            vm = {
                "id": f"/subscriptions/{state.subscription}/resourceGroups/{rg}/providers/"
                f"Microsoft.Compute/virtualMachines/{name}",
                "name": name,
                "type": "Microsoft.Compute/virtualMachines",
                "location": body["location"],
                "tags": dict(body.get("tags") or {}),
                "properties": {
                    **{k: v for k, v in props.items() if k != "osProfile"},
                    "provisioningState": "Creating",
                    "vmId": str(uuid.uuid4()),
                    "timeCreated": "2026-01-01T00:00:00+00:00",
                },
            }
            if "zones" in body:
                vm["zones"] = body["zones"]
            state.vms[key] = vm
            state.power[key] = "starting"

            def finish() -> None:
                if key in state.vms:
                    state.vms[key]["properties"]["provisioningState"] = "Succeeded"
                    state.power[key] = "running"

            headers = self._start_operation(key, body["location"], finish)
            self._send(
                201,
                self._view(key, False),
                {"Azure-AsyncOperation": headers["Azure-AsyncOperation"], "Retry-After": "0"},
            )

        # -- lists -------------------------------------------------------------------------
        def _list(self, path: str, rg: str | None, query: dict[str, str]) -> None:
            keys = sorted(k for k in state.vms if rg is None or k[0] == rg.lower())
            with_status = (
                query.get("statusOnly") == "true" or query.get("$expand") == "instanceView"
            )
            self._paged(path, query, [self._view(k, with_status) for k in keys])

        def _paged(self, path: str, query: dict[str, str], items: list[dict[str, Any]]) -> None:
            start = int(query.get("$skiptoken", "0"))
            end = start + state.page_size
            body: dict[str, Any] = {"value": items[start:end]}
            if end < len(items):
                rest = "&".join(f"{k}={v}" for k, v in query.items() if k != "$skiptoken")
                body["nextLink"] = f"{ARM}{path}?{rest}&$skiptoken={end}"
            self._send(200, body)

    return Handler
