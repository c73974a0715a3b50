"""A local fake of the Compute Engine REST API, for tests (yours and ours).

:class:`FakeCompute` serves, on 127.0.0.1, the part of ``compute/v1`` the ``gcp`` driver uses:
instances (insert, get, delete, start, stop, reset, setLabels, setTags, zonal and aggregated
lists with ``pageToken`` paging), zone operations (get and ``wait``, which answers RUNNING a
set number of times before DONE), machine types (list and get), images, regions and zones,
and errors that a test injects (404, 409, 429, ``rateLimitExceeded``..., with
``Retry-After``; a response lost after the request was carried out; a dropped connection).
A repeated ``requestId`` gets the operation of its first request back, as in GCE. Point the real
clients at it with ``client_options={"api_endpoint": fake.url}``, ``transport="rest"`` and
``AnonymousCredentials()``::

    with FakeCompute() as fake:
        driver = GcpDriver({"project": fake.project, "zone": "europe-west1-b",
                            "api_endpoint": fake.url}, credentials=AnonymousCredentials())
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from novacron_sdk.testing.http_fake import LocalHttpFake, take_fault

_ids = itertools.count(1000)
_PREFIX = "/compute/v1/projects/(?P<project>[^/]+)"
_INSTANCE = re.compile(
    _PREFIX + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/:]+)(?:/(?P<action>[A-Za-z]+))?$"
)
_INSTANCES = re.compile(_PREFIX + r"/zones/(?P<zone>[^/]+)/instances$")
_AGGREGATED = re.compile(_PREFIX + r"/aggregated/instances$")
_OPERATION = re.compile(
    _PREFIX + r"/zones/(?P<zone>[^/]+)/operations/(?P<op>[^/]+?)(?P<wait>/wait)?$"
)
_MACHINE_TYPES = re.compile(_PREFIX + r"/zones/(?P<zone>[^/]+)/machineTypes$")
_MACHINE_TYPE = re.compile(_PREFIX + r"/zones/(?P<zone>[^/]+)/machineTypes/(?P<name>[^/]+)$")
_IMAGES = re.compile(_PREFIX + r"/global/images$")
_REGIONS = re.compile(_PREFIX + r"/regions$")
_ZONES = re.compile(_PREFIX + r"/zones$")

MACHINE_TYPES = [
    {"name": "e2-micro", "guestCpus": 2, "memoryMb": 1024, "isSharedCpu": True},
    {"name": "e2-small", "guestCpus": 2, "memoryMb": 2048, "isSharedCpu": True},
    {"name": "n2-standard-4", "guestCpus": 4, "memoryMb": 16384},
]
REGIONS = {"europe-west1": ["europe-west1-b", "europe-west1-c"], "us-central1": ["us-central1-a"]}
# (status while the operation runs, status when it is done)
_ACTIONS = {
    "start": ("STAGING", "RUNNING"),
    "stop": ("STOPPING", "TERMINATED"),
    "reset": ("RUNNING", "RUNNING"),
}


@dataclass
class Fault:
    """Answer the next ``count`` matching requests with a Compute Engine error."""

    status: int
    reason: str
    message: str
    method: str = "*"
    path_contains: str = ""
    count: int = 1
    retry_after: str | None = None
    """The ``Retry-After`` header to send with the error, if any."""
    after: bool = False
    """Carry the request out first, then answer the error instead (a lost response)."""
    drop: bool = False
    """Close the connection without any answer (status and reason are then unused)."""
    delay: float = 0.0
    """Seconds to stall before answering (a slow server); with status 0, then answer
    normally."""


@dataclass
class _Operation:
    body: dict[str, Any]
    waits_left: int
    finish: Callable[[], None]
    error: dict[str, str] | None = None

    def advance(self) -> None:
        if self.body["status"] == "DONE":
            return
        if self.waits_left > 0:
            self.waits_left -= 1
            return
        self.body["status"] = "DONE"
        if self.error is None:
            self.finish()
        else:
            self.body["error"] = {"errors": [self.error]}
            self.body["httpErrorStatusCode"] = 503
            self.body["httpErrorMessage"] = "SERVICE UNAVAILABLE"


@dataclass
class FakeComputeState:
    """Everything the fake holds; tests may read and change it (under ``lock``)."""

    project: str = "novacron-test"
    page_size: int = 2
    waits_per_operation: int = 1
    instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    operation_failures: list[dict[str, str]] = field(default_factory=list)
    operations: dict[str, _Operation] = field(default_factory=dict)
    request_ids: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)


class FakeCompute(LocalHttpFake[FakeComputeState]):
    """The fake Compute Engine server; use it as a context manager. ``url`` is its base."""

    def __init__(self, state: FakeComputeState | None = None) -> None:
        state = state or FakeComputeState()
        super().__init__(state, _make_handler(state))
        self.project = self.state.project


def _error(status: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
        }
    }


def _make_handler(state: FakeComputeState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet."""

        muted = False  # True while carrying out a request whose response gets lost
        request_id: str | None = None

        def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            if self.muted:
                return
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            try:
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a test's timeout)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            with state.lock:
                state.requests.append((self.command, url.path))
                fault = take_fault(state.faults, self.command, url.path)
            if fault is not None and fault.delay:
                time.sleep(fault.delay)  # outside the lock: other requests go on
                if not fault.status:
                    fault = None
            with state.lock:
                if fault is not None and fault.drop:
                    self.close_connection = True
                    return
                if fault is not None and fault.after:
                    self.muted = True
                    self._dispatch(url.path, query, raw)
                    self.muted = False
                if fault is not None:
                    extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    self._send(
                        fault.status, _error(fault.status, fault.reason, fault.message), extra
                    )
                    return
                self._dispatch(url.path, query, raw)

        def _dispatch(self, path: str, query: dict[str, str], raw: bytes) -> None:
            self.request_id = query.get("requestId")
            seen = state.request_ids.get(self.request_id) if self.request_id else None
            if seen is not None:  # a retry: GCE answers with the first request's operation
                self._send(200, seen)
                return
            self._route(path, query, json.loads(raw) if raw else {})

        do_GET = do_POST = do_DELETE = _handle  # noqa: N815 - http.server names

        def _route(self, path: str, query: dict[str, str], body: dict[str, Any]) -> None:
            if match := _OPERATION.match(path):
                self._operation(match["op"], bool(match["wait"]))
            elif match := _INSTANCE.match(path):
                self._instance(match["zone"], match["name"], match["action"], body)
            elif match := _INSTANCES.match(path):
                if self.command == "POST":
                    self._insert(match["zone"], body)
                else:
                    zone = match["zone"]
                    items = [v for (z, _), v in sorted(state.instances.items()) if z == zone]
                    self._paged(query, items, "compute#instanceList")
            elif _AGGREGATED.match(path):
                self._aggregated(query)
            elif _MACHINE_TYPES.match(path):
                self._paged(query, MACHINE_TYPES, "compute#machineTypeList")
            elif match := _MACHINE_TYPE.match(path):
                self._machine_type(match["zone"], match["name"])
            elif _IMAGES.match(path):
                self._paged(query, state.images, "compute#imageList")
            elif _REGIONS.match(path):
                regions = [
                    {"name": r, "zones": [f"zones/{z}" for z in zs]} for r, zs in REGIONS.items()
                ]
                self._paged(query, regions, "compute#regionList")
            elif _ZONES.match(path):
                zones = [
                    {"name": z, "region": f"regions/{r}", "status": "UP"}
                    for r, zs in REGIONS.items()
                    for z in zs
                ]
                self._paged(query, zones, "compute#zoneList")
            else:
                self._send(404, _error(404, "notFound", f"no route for {path}"))

        def _paged(self, query: dict[str, str], items: list[dict[str, Any]], kind: str) -> None:
            size = int(query.get("maxResults") or state.page_size)
            start = int(query.get("pageToken") or 0)
            body: dict[str, Any] = {"kind": kind, "items": items[start : start + size]}
            if start + size < len(items):
                body["nextPageToken"] = str(start + size)
            self._send(200, body)

        def _machine_type(self, zone: str, name: str) -> None:
            found = next((m for m in MACHINE_TYPES if m["name"] == name), None)
            if found is None:
                message = f"The resource 'projects/{state.project}/zones/{zone}/machineTypes/"
                self._send(404, _error(404, "notFound", f"{message}{name}' was not found"))
                return
            self._send(200, {**found, "kind": "compute#machineType", "zone": zone})

        def _aggregated(self, query: dict[str, str]) -> None:
            size = int(query.get("maxResults") or state.page_size)
            start = int(query.get("pageToken") or 0)
            chosen = sorted(state.instances.items())[start : start + size]
            scopes: dict[str, Any] = {}
            for (zone, _), instance in chosen:
                scopes.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(instance)
            # Real responses also carry scopes without instances, with only a warning.
            scopes.setdefault(
                "zones/us-central1-a",
                {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results"}},
            )
            body: dict[str, Any] = {"kind": "compute#instanceAggregatedList", "items": scopes}
            if start + size < len(state.instances):
                body["nextPageToken"] = str(start + size)
            self._send(200, body)

        # -- operations ----------------------------------------------------------------------
        def _start(self, zone: str, kind: str, target: str, finish: Callable[[], None]) -> None:
            name = f"operation-{next(_ids)}"
            error = state.operation_failures.pop(0) if state.operation_failures else None
            body = {
                "kind": "compute#operation",
                "id": str(next(_ids)),
                "name": name,
                "zone": f"https://compute.googleapis.com/compute/v1/projects/{state.project}"
                f"/zones/{zone}",
                "operationType": kind,
                "targetLink": target,
                "status": "RUNNING",
                "progress": 0,
            }
            state.operations[name] = _Operation(body, state.waits_per_operation, finish, error)
            if self.request_id:
                state.request_ids[self.request_id] = body
            self._send(200, body)

        def _operation(self, name: str, wait: bool) -> None:
            op = state.operations.get(name)
            if op is None:
                self._send(
                    404, _error(404, "notFound", f"The resource 'operation {name}' was not found")
                )
                return
            if wait:
                op.advance()
            self._send(200, op.body)

        # -- instances -----------------------------------------------------------------------
        def _insert(self, zone: str, body: dict[str, Any]) -> None:
            name = body.get("name")
            if not name:
                self._send(
                    400, _error(400, "required", "Required field 'resource.name' not specified")
                )
                return
            if (zone, name) in state.instances:
                self._send(
                    409,
                    _error(
                        409,
                        "alreadyExists",
                        f"The resource 'projects/{state.project}/zones/{zone}/instances/{name}' "
                        "already exists",
                    ),
                )
                return
            machine = str(body.get("machineType", "")).rsplit("/", 1)[-1]
            if machine not in {m["name"] for m in MACHINE_TYPES}:
                self._send(
                    400,
                    _error(
                        400,
                        "invalid",
                        f"Invalid value for field 'resource.machineType': "
                        f"'{body.get('machineType')}'. Machine type with name '{machine}' does "
                        f"not exist in zone '{zone}'.",
                    ),
                )
                return
            link = (
                f"https://compute.googleapis.com/compute/v1/projects/{state.project}/zones/{zone}"
            )
            instance = {
                **body,
                "kind": "compute#instance",
                "id": str(next(_ids)),
                "zone": link,
                "selfLink": f"{link}/instances/{name}",
                "status": "PROVISIONING",
                "creationTimestamp": "2026-01-01T00:00:00.000-00:00",
                "labelFingerprint": "fp0",
                "tags": {**(body.get("tags") or {}), "fingerprint": "tp0"},
            }
            for n, nic in enumerate(instance.get("networkInterfaces") or []):
                nic["networkIP"] = f"10.0.0.{n + 2}"
            state.instances[(zone, name)] = instance

            def finish() -> None:
                instance["status"] = "RUNNING"

            self._start(zone, "insert", instance["selfLink"], finish)

        def _instance(self, zone: str, name: str, action: str | None, body: dict[str, Any]) -> None:
            key = (zone, name)
            instance = state.instances.get(key)
            if instance is None:
                self._send(
                    404,
                    _error(
                        404,
                        "notFound",
                        f"The resource 'projects/{state.project}/zones/{zone}/instances/{name}' "
                        "was not found",
                    ),
                )
                return
            if self.command == "GET" and action is None:
                # Reading an instance lets time pass for its operations, as it does in GCE.
                for op in list(state.operations.values()):
                    if op.body["targetLink"] == instance["selfLink"]:
                        op.advance()
                if key in state.instances:
                    self._send(200, instance)
                else:  # the delete just finished
                    self._send(404, _error(404, "notFound", f"instance '{name}' was deleted"))
            elif self.command == "DELETE" and action is None:
                instance["status"] = "STOPPING"

                def forget() -> None:
                    state.instances.pop(key, None)

                self._start(zone, "delete", instance["selfLink"], forget)
            elif self.command == "POST" and action in _ACTIONS:
                self._power(instance, zone, action)
            elif self.command == "POST" and action in ("setLabels", "setTags"):
                self._set(instance, zone, action, body)
            else:
                self._send(405, _error(405, "methodNotAllowed", f"{self.command} {self.path}"))

        def _power(self, instance: dict[str, Any], zone: str, action: str) -> None:
            if action == "reset" and instance["status"] != "RUNNING":
                self._send(
                    400,
                    _error(
                        400,
                        "resourceNotReady",
                        f"The resource '{instance['selfLink']}' is not ready",
                    ),
                )
                return
            during, after = _ACTIONS[action]
            instance["status"] = during

            def finish() -> None:
                instance["status"] = after

            self._start(zone, action, instance["selfLink"], finish)

        def _set(
            self, instance: dict[str, Any], zone: str, action: str, body: dict[str, Any]
        ) -> None:
            field_name, current = (
                ("labelFingerprint", instance.get("labelFingerprint"))
                if action == "setLabels"
                else ("fingerprint", (instance.get("tags") or {}).get("fingerprint"))
            )
            if body.get(field_name) != current:
                self._send(
                    412,
                    _error(
                        412,
                        "conditionNotMet",
                        f"Supplied fingerprint does not match current fingerprint ({field_name}).",
                    ),
                )
                return
            version = int(str(current)[2:] or 0) + 1

            def finish() -> None:
                if action == "setLabels":
                    instance["labels"] = dict(body.get("labels") or {})
                    instance["labelFingerprint"] = f"fp{version}"
                else:
                    instance["tags"] = {
                        "items": list(body.get("items") or []),
                        "fingerprint": f"tp{version}",
                    }

            self._start(zone, action, instance["selfLink"], finish)

    return Handler
