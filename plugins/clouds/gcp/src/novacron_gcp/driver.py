"""The ``gcp`` cloud driver: Compute Engine instances through google-cloud-compute.

The clients use the REST transport (no gRPC channel to manage) and run in worker threads
(``asyncio.to_thread``): compute_v1 has no async REST client. The driver waits on operations
itself with a ZoneOperationsClient built with the same options, because the SDK's own
operation polling ignores a custom ``api_endpoint`` and would go to compute.googleapis.com.
Retries come from :mod:`novacron_sdk.clouds.retry` (``drivers.settings.gcp.retry``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import google.auth
from google.api_core import exceptions as api
from google.api_core.client_options import ClientOptions
from google.auth import credentials as auth_credentials
from google.auth import exceptions as auth
from google.cloud import compute_v1
from requests import RequestException

from novacron_gcp.convert import (
    custom_shape,
    image_to_model,
    instance_resource,
    instance_to_vm,
    last_segment,
    machine_type_to_size,
)
from novacron_gcp.credentials import SCOPES, load_credentials_file
from novacron_gcp.errors import is_retryable, map_error, operation_error, retry_after
from novacron_gcp.settings import GcpSettings
from novacron_sdk.clouds.interface import CloudDriver
from novacron_sdk.clouds.retry import RetryPolicy, retry_async
from novacron_sdk.clouds.settings import CLOUD_FEATURES
from novacron_sdk.errors import DriverError, NotFoundError
from novacron_sdk.models import VM, DriverFeature, Image, Location, Page, Size, VMSpec, VMState

T = TypeVar("T")
log = logging.getLogger(__name__)
_MAX_PAGE = 500  # Compute Engine's maxResults limit
_DONE = compute_v1.Operation.Status.DONE
# operations.wait answers when the operation is DONE or after about two minutes.
_OPERATION_WAIT_SECONDS = 120.0
# Mutating instance calls by action, as request classes: only these carry ``request_id``.
_ACTION_REQUESTS: dict[str, Any] = {
    "start": compute_v1.StartInstanceRequest,
    "stop": compute_v1.StopInstanceRequest,
    "reset": compute_v1.ResetInstanceRequest,
    "delete": compute_v1.DeleteInstanceRequest,
}


class GcpDriver(CloudDriver):
    """Compute Engine instances of one project (all zones; new ones go to ``zone``).

    ``credentials`` (any google-auth Credentials) may be passed by code that embeds the
    driver; config files set ``credentials_file`` or rely on application default credentials.
    """

    name: ClassVar[str] = "gcp"
    description: ClassVar[str] = "Google Compute Engine instances (google-cloud-compute)"
    features: ClassVar[frozenset[DriverFeature]] = CLOUD_FEATURES

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        *,
        credentials: auth_credentials.Credentials | None = None,
    ) -> None:
        super().__init__(settings)
        self.config = GcpSettings.parse(self.settings)
        self.retry_policy = RetryPolicy.from_settings(self.config.retry)
        self._credentials = credentials
        self._project = self.config.project
        self._clients: dict[str, Any] = {}
        # (zone, machine type) -> (vCPUs, memory MiB), or None if the API would not say.
        # Machine types do not change, so each is asked for once per driver.
        self._shapes: dict[tuple[str, str], tuple[int, int] | None] = {}

    # -- plumbing ----------------------------------------------------------------------------
    def credentials(self) -> auth_credentials.Credentials:
        """The credentials in use: given, from ``credentials_file``, or application default."""
        if self._credentials is None:
            try:
                if self.config.credentials_file:
                    found, project = load_credentials_file(self.config.credentials_file)
                else:
                    found, project = google.auth.default(scopes=SCOPES)
            except auth.GoogleAuthError as exc:
                raise map_error(exc, "credential setup") from exc
            self._credentials = found
            self._project = self._project or project or os.environ.get("GOOGLE_CLOUD_PROJECT")
        return self._credentials

    async def ex_credential_source(self) -> str:
        """The credentials class in use, e.g. ``google.oauth2.credentials.Credentials``."""
        # Application default credentials may ask the metadata server: not on the event loop.
        found = await asyncio.to_thread(self.credentials)
        return f"{type(found).__module__}.{type(found).__name__}"

    @property
    def project(self) -> str:
        """The project: from the settings, else the one the credentials name."""
        self.credentials()
        if not self._project:
            msg = (
                "no GCP project: set drivers.settings.gcp.project (or GOOGLE_CLOUD_PROJECT, or "
                "use credentials that name one)"
            )
            raise DriverError(msg, code="MissingProject")
        return self._project

    def _zone(self) -> str:
        if not self.config.zone:
            msg = "set drivers.settings.gcp.zone (e.g. europe-west1-b): it is needed here"
            raise DriverError(msg, code="MissingZone")
        return self.config.zone

    def _client(self, kind: str) -> Any:
        if kind not in self._clients:
            options = ClientOptions(api_endpoint=self.config.api_endpoint)
            factory = getattr(compute_v1, kind)
            self._clients[kind] = factory(
                credentials=self.credentials(), transport="rest", client_options=options
            )
        return self._clients[kind]

    def _opts(self, timeout: float | None = None) -> dict[str, Any]:
        """Keyword arguments for every compute_v1 call: the client library's own retries off
        (``retry=None``; its defaults retry 503s for up to 600 s, which would multiply the
        driver's attempts and ignore ``retry: false``) and an explicit per-request timeout."""
        return {"retry": None, "timeout": timeout or self.config.request_timeout}

    async def _call(self, action: str, call: Callable[[], T]) -> T:
        """Run ``call()`` in a worker thread, with retries and mapped errors."""

        async def attempt() -> T:
            return await asyncio.to_thread(call)

        try:
            return await retry_async(
                attempt,
                policy=self.retry_policy,
                retryable=is_retryable,
                description=action,
                retry_after=retry_after,
            )
        except (api.GoogleAPIError, auth.GoogleAuthError, RequestException) as exc:
            raise map_error(exc, action) from exc

    async def _instances(self) -> compute_v1.InstancesClient:
        client: compute_v1.InstancesClient = await asyncio.to_thread(
            self._client, "InstancesClient"
        )
        return client

    async def _wait_operation(self, zone: str, operation: Any, action: str) -> None:
        """Wait for a zone operation on our own ZoneOperationsClient; raise if it failed."""
        if not self.config.wait:
            return
        ops: compute_v1.ZoneOperationsClient = await asyncio.to_thread(
            self._client, "ZoneOperationsClient"
        )
        project, name = self.project, operation.name
        opts = self._opts(self.config.request_timeout + _OPERATION_WAIT_SECONDS)
        deadline = time.monotonic() + self.config.wait_timeout
        status = operation.status
        while status != _DONE:
            if time.monotonic() > deadline:
                msg = f"GCP {action} is still running after {self.config.wait_timeout:.0f}s"
                raise DriverError(msg, code="OperationTimeout")
            # operations.wait returns when the operation is DONE or after about two minutes.
            operation = await self._call(
                f"wait for {action}",
                lambda: ops.wait(project=project, zone=zone, operation=name, **opts),
            )
            status = operation.status
        failure = operation_error(operation, action)
        if failure is not None:
            raise failure

    # -- VMs ---------------------------------------------------------------------------------
    async def _list_vms_page(self, token: str | None, page_size: int) -> Page[VM]:
        client = await self._instances()
        request = compute_v1.AggregatedListInstancesRequest(
            project=self.project,
            max_results=max(1, min(_MAX_PAGE, page_size)),
        )
        if token:
            request.page_token = token
        opts = self._opts()

        def fetch() -> compute_v1.InstanceAggregatedList:
            return next(iter(client.aggregated_list(request=request, **opts).pages))

        page = await self._call("list instances", fetch)
        instances = [instance for scoped in page.items.values() for instance in scoped.instances]
        vms = await self._to_vms(instances)
        return Page[VM](items=tuple(vms), next_token=page.next_page_token or None)

    async def _to_vms(self, instances: list[compute_v1.Instance]) -> list[VM]:
        """``instances`` as VMs, with vCPUs and memory from their machine types."""
        keys = [_shape_key(instance) for instance in instances]
        missing = sorted({key for key in keys if key is not None} - self._shapes.keys())
        answers = await asyncio.gather(*(self._machine_shape(*key) for key in missing))
        found = {key: shape for key, (shape, _) in zip(missing, answers, strict=True)}
        # Only definitive answers are kept; after a transient failure ask again next time.
        self._shapes.update(
            (key, shape) for key, (shape, final) in zip(missing, answers, strict=True) if final
        )
        shapes = {**self._shapes, **found}
        return [
            instance_to_vm(instance, shapes.get(key) if key else None)
            for instance, key in zip(instances, keys, strict=True)
        ]

    async def _machine_shape(
        self, zone: str, machine_type: str
    ) -> tuple[tuple[int, int] | None, bool]:
        """((vCPUs, memory MiB), final) of ``machine_type`` in ``zone``. If the API refuses
        (listing VMs must not fail for it): a warning and None, final unless the failure was
        transient (throttling, 5xx, connection), which must not be remembered."""
        shape = custom_shape(machine_type)
        if shape is not None:
            return shape, True
        client: compute_v1.MachineTypesClient = await asyncio.to_thread(
            self._client, "MachineTypesClient"
        )
        project, opts = self.project, self._opts()
        try:
            found = await self._call(
                f"get machine type {machine_type!r}",
                lambda: client.get(project=project, zone=zone, machine_type=machine_type, **opts),
            )
        except DriverError as exc:
            log.warning(
                "cannot read the vCPUs and memory of machine type %s in %s (%s); its VMs show 0",
                machine_type,
                zone,
                exc,
            )
            cause = exc.__cause__
            return None, not (cause is None or is_retryable(cause))
        return (int(found.guest_cpus), int(found.memory_mb)), True

    async def _vm(self, instance: compute_v1.Instance) -> VM:
        (vm,) = await self._to_vms([instance])
        return vm

    async def _get(self, zone: str, name: str) -> compute_v1.Instance:
        client, project, opts = await self._instances(), self.project, self._opts()
        return await self._call(
            f"get instance {name!r}",
            lambda: client.get(project=project, zone=zone, instance=name, **opts),
        )

    async def get_vm(self, vm_id: str) -> VM:
        """The instance with id ``zone/name``, or named ``vm_id`` (``zone`` first, then all)."""
        if "/" in vm_id:
            zone, _, name = vm_id.partition("/")
            return await self._vm(await self._get(zone, name))
        if self.config.zone:
            try:
                return await self._vm(await self._get(self.config.zone, vm_id))
            except NotFoundError:
                pass
        return await super().get_vm(vm_id)

    async def create_vm(self, spec: VMSpec) -> VM:
        """Create an instance (``spec.extra``: spot, preemptible, network_tags, network,
        subnetwork; ``spec.location`` is a zone); it starts on creation."""
        self.require(DriverFeature.CREATE)
        zone = spec.location or self._zone()
        resource = instance_resource(spec, self.config, zone)
        client, opts = await self._instances(), self._opts()
        # One request id for this create, sent again on every retry: Compute Engine then
        # answers a retry after a lost response with the same operation, not 409
        # alreadyExists.
        request = compute_v1.InsertInstanceRequest(
            project=self.project, zone=zone, instance_resource=resource, request_id=_request_id()
        )
        operation = await self._call(
            f"create instance {spec.name!r}", lambda: client.insert(request=request, **opts)
        )
        await self._wait_operation(zone, operation, f"create instance {spec.name!r}")
        return await self.settle(
            await self.get_vm(f"{zone}/{spec.name}"), VMState.RUNNING, self.config
        )

    async def _action(self, vm_id: str, action: str, target: VMState | None) -> VM:
        vm = await self.get_vm(vm_id)
        zone, name = str(vm.location), vm.name
        client, opts = await self._instances(), self._opts()
        method = getattr(client, action)
        # The same request id on every retry makes a retried start/stop/reset/delete safe.
        request = _ACTION_REQUESTS[action](
            project=self.project, zone=zone, instance=name, request_id=_request_id()
        )
        operation = await self._call(
            f"{action} instance {name!r}", lambda: method(request=request, **opts)
        )
        await self._wait_operation(zone, operation, f"{action} instance {name!r}")
        return await self.settle(await self.get_vm(vm.id), target, self.config) if target else vm

    async def start(self, vm_id: str) -> VM:
        """Start a stopped (TERMINATED) instance."""
        self.require(DriverFeature.START_STOP)
        return await self._action(vm_id, "start", VMState.RUNNING)

    async def stop(self, vm_id: str) -> VM:
        """Stop a running instance (its disks stay; Compute Engine calls it TERMINATED)."""
        self.require(DriverFeature.START_STOP)
        return await self._action(vm_id, "stop", VMState.STOPPED)

    async def reboot(self, vm_id: str) -> VM:
        """Reset a running instance (a hard reset, as Compute Engine offers no soft reboot)."""
        self.require(DriverFeature.REBOOT)
        return await self._action(vm_id, "reset", VMState.RUNNING)

    async def destroy(self, vm_id: str) -> None:
        """Delete an instance and its auto-delete disks."""
        self.require(DriverFeature.DESTROY)
        await self._action(vm_id, "delete", None)

    # -- catalogue ---------------------------------------------------------------------------
    async def list_images(self) -> list[Image]:
        """Images of ``image_projects`` (default: the driver's project)."""
        self.require(DriverFeature.IMAGES)
        client: compute_v1.ImagesClient = await asyncio.to_thread(self._client, "ImagesClient")
        images: list[Image] = []
        for project in self.config.image_projects or [self.project]:
            found = await self._call(
                f"list images of {project}", _images_of(client, project, self._opts())
            )
            images += [image_to_model(item, project) for item in found]
        return images

    async def list_sizes(self) -> list[Size]:
        """Machine types of ``zone``."""
        self.require(DriverFeature.SIZES)
        client: compute_v1.MachineTypesClient = await asyncio.to_thread(
            self._client, "MachineTypesClient"
        )
        project, zone = self.project, self._zone()
        opts = self._opts()
        found = await self._call(
            "list machine types", lambda: list(client.list(project=project, zone=zone, **opts))
        )
        return [machine_type_to_size(item) for item in found]

    async def list_locations(self) -> list[Location]:
        """Regions and their zones."""
        self.require(DriverFeature.LOCATIONS)
        regions_client = await asyncio.to_thread(self._client, "RegionsClient")
        zones_client = await asyncio.to_thread(self._client, "ZonesClient")
        project, opts = self.project, self._opts()
        regions = await self._call(
            "list regions", lambda: list(regions_client.list(project=project, **opts))
        )
        zones = await self._call(
            "list zones", lambda: list(zones_client.list(project=project, **opts))
        )
        return [Location(id=r.name, name=r.name, driver=self.name) for r in regions] + [
            Location(
                id=z.name,
                name=z.name,
                parent=last_segment(z.region) if z.region else None,
                driver=self.name,
                extra={"status": z.status or None},
            )
            for z in zones
        ]

    # -- extras ------------------------------------------------------------------------------
    async def _set_labels(
        self, vm_id: str, change: Callable[[dict[str, str]], dict[str, str]]
    ) -> VM:
        vm = await self.get_vm(vm_id)
        zone, name = str(vm.location), vm.name
        current = await self._get(zone, name)
        body = compute_v1.InstancesSetLabelsRequest(
            labels=change(dict(current.labels)), label_fingerprint=current.label_fingerprint
        )
        client, opts = await self._instances(), self._opts()
        request = compute_v1.SetLabelsInstanceRequest(
            project=self.project,
            zone=zone,
            instance=name,
            instances_set_labels_request_resource=body,
            request_id=_request_id(),
        )
        operation = await self._call(
            f"set labels of {name!r}", lambda: client.set_labels(request=request, **opts)
        )
        await self._wait_operation(zone, operation, f"set labels of {name!r}")
        return await self.get_vm(vm.id)

    async def ex_set_labels(self, vm_id: str, labels: Mapping[str, str]) -> VM:
        """Add or overwrite labels (the SDK's tags) on an instance."""
        return await self._set_labels(vm_id, lambda current: {**current, **labels})

    async def ex_remove_labels(self, vm_id: str, keys: list[str]) -> VM:
        """Remove labels by key from an instance."""
        return await self._set_labels(
            vm_id, lambda current: {k: v for k, v in current.items() if k not in keys}
        )

    async def ex_set_network_tags(self, vm_id: str, network_tags: list[str]) -> VM:
        """Replace an instance's network tags, which firewall rules target (GCP's security
        groups)."""
        vm = await self.get_vm(vm_id)
        zone, name = str(vm.location), vm.name
        current = await self._get(zone, name)
        tags = compute_v1.Tags(items=list(network_tags), fingerprint=current.tags.fingerprint)
        client, opts = await self._instances(), self._opts()
        request = compute_v1.SetTagsInstanceRequest(
            project=self.project,
            zone=zone,
            instance=name,
            tags_resource=tags,
            request_id=_request_id(),
        )
        operation = await self._call(
            f"set network tags of {name!r}", lambda: client.set_tags(request=request, **opts)
        )
        await self._wait_operation(zone, operation, f"set network tags of {name!r}")
        return await self.get_vm(vm.id)

    async def close(self) -> None:
        """Close every client's HTTP session. Safe to call twice."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await asyncio.to_thread(client.transport.close)


def _request_id() -> str:
    """A fresh request id: one per operation call, reused by that call's retries."""
    return str(uuid.uuid4())


def _shape_key(instance: compute_v1.Instance) -> tuple[str, str] | None:
    if not instance.machine_type or not instance.zone:
        return None
    return last_segment(instance.zone), last_segment(instance.machine_type)


def _images_of(
    client: compute_v1.ImagesClient, project: str, opts: dict[str, Any]
) -> Callable[[], list[compute_v1.Image]]:
    def fetch() -> list[compute_v1.Image]:
        return list(client.list(project=project, **opts))

    return fetch
