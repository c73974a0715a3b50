"""The ``azure`` cloud driver: Azure virtual machines through azure-mgmt-compute.

The SDK's sync client runs in worker threads (``asyncio.to_thread``): its async twin needs
aiohttp, one more dependency for no gain here, since each call is a few HTTP requests. The
pipeline's own retries are switched off (``retry_total=0``) so that one policy,
:mod:`novacron_sdk.clouds.retry`, decides them for every cloud; a retried long-running
operation is re-issued whole, which ARM accepts because PUT, start, stop and delete are
idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError
from azure.core.polling import LROPoller
from azure.core.rest import HttpRequest
from azure.identity import ClientSecretCredential, DefaultAzureCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachine, VirtualMachineUpdate

from novacron_azure.convert import (
    CREATE_TAG,
    VM_ID,
    create_body,
    custom_image_from_arm,
    size_from_arm,
    size_of,
    size_shape,
    vm_from_arm,
)
from novacron_azure.errors import (
    demote_credential_chain_report,
    is_retryable,
    map_error,
    retry_after,
)
from novacron_azure.settings import AzureSettings
from novacron_sdk.clouds.interface import CloudDriver
from novacron_sdk.clouds.retry import RetryPolicy, retry_async
from novacron_sdk.clouds.settings import CLOUD_FEATURES
from novacron_sdk.errors import DriverError, InvalidStateError, NotFoundError
from novacron_sdk.models import VM, DriverFeature, Image, Location, Page, Size, VMSpec, VMState

T = TypeVar("T")
log = logging.getLogger(__name__)

LOCATIONS_API_VERSION = "2022-12-01"


def _already_exists(name: str, group: str, existing: Mapping[str, Any] | None) -> InvalidStateError:
    """The error for a create whose name is taken (``existing``: the VM, when still there)."""
    where = f" ({existing['id']})" if existing is not None else ""
    msg = (
        f"a VM named {name!r} already exists in resource group {group!r}{where}; choose "
        "another name, or destroy that VM first"
    )
    return InvalidStateError(msg, code="VMAlreadyExists")


class AzureDriver(CloudDriver):
    """Azure virtual machines of one subscription (optionally one resource group).

    ``credential`` (any azure-core TokenCredential) and ``transport`` (an azure-core HTTP
    transport) may be passed by code that embeds the driver; config files set the rest.
    """

    name: ClassVar[str] = "azure"
    description: ClassVar[str] = "Azure virtual machines (azure-mgmt-compute)"
    features: ClassVar[frozenset[DriverFeature]] = CLOUD_FEATURES

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        *,
        credential: TokenCredential | None = None,
        transport: Any = None,
    ) -> None:
        super().__init__(settings)
        self.config = AzureSettings.parse(self.settings)
        self.retry_policy = RetryPolicy.from_settings(self.config.retry)
        self._credential = credential
        self._transport = transport
        self._client: ComputeManagementClient | None = None
        self._client_lock = asyncio.Lock()
        # Location -> {VM size: (vCPUs, memory MiB)}; empty if ARM would not say. Sizes do
        # not change, so each location's are asked for once per driver.
        self._shapes: dict[str, dict[str, tuple[int, int]]] = {}

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def subscription_id(self) -> str:
        """The subscription from the settings or ``AZURE_SUBSCRIPTION_ID``."""
        subscription = self.config.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID")
        if not subscription:
            msg = (
                "no Azure subscription: set drivers.settings.azure.subscription_id or "
                "AZURE_SUBSCRIPTION_ID"
            )
            raise DriverError(msg, code="MissingSubscription")
        return subscription

    def credential(self) -> TokenCredential:
        """The credential in use: given, explicit service principal, or the default chain."""
        if self._credential is None:
            cfg = self.config
            explicit = (cfg.tenant_id, cfg.client_id, cfg.client_secret)
            if all(explicit):
                self._credential = ClientSecretCredential(
                    str(cfg.tenant_id),
                    str(cfg.client_id),
                    cfg.client_secret.get_secret_value() if cfg.client_secret else "",
                )
            elif cfg.client_secret is not None:
                msg = (
                    "drivers.settings.azure.client_secret needs tenant_id and client_id too "
                    "(or set none of them to use DefaultAzureCredential)"
                )
                raise DriverError(msg, code="PartialCredentials")
            else:
                demote_credential_chain_report()
                self._credential = DefaultAzureCredential(
                    exclude_interactive_browser_credential=True,
                    managed_identity_client_id=cfg.client_id,
                    **({"tenant_id": cfg.tenant_id} if cfg.tenant_id else {}),
                )
        return self._credential

    async def ex_credential_source(self) -> str:
        """The credential class in use (``ClientSecretCredential``, ``DefaultAzureCredential``)."""
        return type(await asyncio.to_thread(self.credential)).__name__

    def _build_client(self) -> ComputeManagementClient:
        kwargs: dict[str, Any] = {"retry_total": 0}
        if self._transport is not None:
            kwargs["transport"] = self._transport
        if self.config.polling_interval is not None:
            kwargs["polling_interval"] = self.config.polling_interval
        return ComputeManagementClient(
            self.credential(), self.subscription_id, base_url=self.config.base_url, **kwargs
        )

    async def _compute(self) -> ComputeManagementClient:
        async with self._client_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._build_client)
        return self._client

    async def _call(self, action: str, call: Callable[[ComputeManagementClient], T]) -> T:
        """Run ``call(client)`` in a worker thread, with retries and mapped errors."""
        client = await self._compute()

        async def attempt() -> T:
            return await asyncio.to_thread(call, client)

        try:
            return await retry_async(
                attempt,
                policy=self.retry_policy,
                retryable=is_retryable,
                description=action,
                retry_after=retry_after,
            )
        except AzureError as exc:
            raise map_error(exc, action) from exc

    def _finish(self, poller: LROPoller[T], action: str) -> T:
        """Wait up to ``wait_timeout`` for a long-running operation, then its result.

        ``LROPoller.result(timeout)`` only joins the polling thread for that long and then
        returns as if the operation had succeeded; this raises instead when it is not done.
        """
        timeout = self.config.wait_timeout
        poller.wait(timeout)
        if not poller.done():
            msg = (
                f"Azure {action} is still running after {timeout:.0f}s; it may still finish: "
                "check the VM with novacron vm show, or raise "
                "drivers.settings.azure.wait_timeout"
            )
            raise DriverError(msg, code="OperationTimeout")
        return poller.result()

    def _locate(self, vm: VM) -> tuple[str, str]:
        match = VM_ID.match(vm.id)
        if match is None:  # pragma: no cover - ids come from ARM
            msg = f"{vm.id!r} is not a virtual machine resource id"
            raise DriverError(msg, code="InvalidResourceId")
        return match["rg"], match["name"]

    # -- VMs ---------------------------------------------------------------------------------
    async def _list_vms_page(self, token: str | None, page_size: int) -> Page[VM]:
        group = self.config.resource_group

        def fetch(client: ComputeManagementClient) -> tuple[list[dict[str, Any]], str | None]:
            # ARM chooses the page size; the token is the nextLink it returned.
            ops = client.virtual_machines
            pager = (
                ops.list(group, expand="instanceView")
                if group
                else ops.list_all(status_only="true")
            ).by_page(continuation_token=token)
            items = [vm.as_dict() for vm in next(pager, [])]
            # azure-core's page iterator has the attribute; its type hint does not say so.
            next_link: str | None = getattr(pager, "continuation_token", None)
            return items, next_link

        items, next_token = await self._call("list virtual machines", fetch)
        vms = await self._to_vms(items)
        return Page[VM](items=tuple(vms), next_token=next_token or None)

    async def _to_vms(self, items: list[dict[str, Any]]) -> list[VM]:
        """ARM virtual machines as VMs, with vCPUs and memory from their sizes."""
        locations = {str(item["location"]).lower() for item in items if item.get("location")}
        known = {loc: self._shapes[loc] for loc in locations if loc in self._shapes}
        for location in sorted(locations - known.keys()):
            shapes = await self._size_shapes(location)
            known[location] = shapes if shapes is not None else {}
            if shapes is not None:  # only a definitive answer is kept
                self._shapes[location] = shapes
        vms = []
        for item in items:
            sizes = known.get(str(item.get("location") or "").lower(), {})
            vms.append(vm_from_arm(item, sizes.get(size_of(item) or "")))
        return vms

    async def _size_shapes(self, location: str) -> dict[str, tuple[int, int]] | None:
        """{VM size: (vCPUs, memory MiB)} in ``location``; if ARM refuses (listing VMs must
        not fail for it), a warning and empty when that is final (e.g. no permission), None
        when it was transient (throttling, 5xx, connection): ask again next time."""
        try:
            items = await self._call(
                f"list VM sizes of {location}",
                lambda c: [s.as_dict() for s in c.virtual_machine_sizes.list(location)],
            )
        except DriverError as exc:
            log.warning(
                "cannot read the vCPUs and memory of the VM sizes in %s (%s); its VMs show 0",
                location,
                exc,
            )
            cause = exc.__cause__
            return None if cause is None or is_retryable(cause) else {}
        return {str(item["name"]): size_shape(item) for item in items}

    async def get_vm(self, vm_id: str) -> VM:
        """The VM with resource id ``vm_id``, or named ``vm_id`` in the resource group."""
        match = VM_ID.match(vm_id)
        if match is not None:
            group, name = match["rg"], match["name"]
        elif self.config.resource_group:
            group, name = self.config.resource_group, vm_id
        else:
            return await super().get_vm(vm_id)
        found = await self._call(
            f"get VM {name!r}",
            lambda c: c.virtual_machines.get(group, name, expand="instanceView").as_dict(),
        )
        (vm,) = await self._to_vms([found])
        return vm

    async def create_vm(self, spec: VMSpec) -> VM:
        """Create a VM (``spec.extra``: spot, spot_max_price, zone, resource_group, subnet_id,
        network_security_group_id, admin_username, ssh_public_key); it starts on creation."""
        self.require(DriverFeature.CREATE)
        group, body = create_body(spec, self.config)
        wait = self.config.wait
        # The PUT is an upsert. The check gives the clear error before anything is sent;
        # If-None-Match: * makes the PUT itself refuse (412) a VM created since the check by
        # someone else. A retry of our own PUT whose first attempt created the VM is refused
        # too: the token tag says whether the VM is ours.
        existing = await self._find(group, spec.name)
        if existing is not None:
            raise _already_exists(spec.name, group, existing)
        token = uuid.uuid4().hex
        body["tags"] = {**body.get("tags", {}), CREATE_TAG: token}
        action = f"create VM {spec.name!r}"
        try:
            created = await self._call(
                action,
                lambda c: self._finish(
                    c.virtual_machines.begin_create_or_update(
                        group,
                        spec.name,
                        VirtualMachine(body),
                        polling=wait,
                        headers={"If-None-Match": "*"},
                    ),
                    action,
                ),
            )
        except DriverError as exc:
            if exc.code == "OperationTimeout":  # not failed: still running, maybe fine
                raise
            if exc.code in ("PreconditionFailed", "412"):
                existing = await self._find(group, spec.name)
                if existing is None or (existing.get("tags") or {}).get(CREATE_TAG) != token:
                    raise _already_exists(spec.name, group, existing) from exc
                created = None  # an earlier attempt of ours created it; its response was lost
            else:
                raise await self._clean_up_failed_create(group, spec.name, exc) from exc
        vm = vm_from_arm(created.as_dict()) if created is not None else None
        return await self.settle(
            await self.get_vm(vm.id if vm else spec.name), VMState.RUNNING, self.config
        )

    async def _find(self, group: str, name: str) -> dict[str, Any] | None:
        """The ARM virtual machine ``name`` of ``group`` as a dict, or None if there is none."""
        try:
            found: dict[str, Any] = await self._call(
                f"get VM {name!r}", lambda c: c.virtual_machines.get(group, name).as_dict()
            )
        except NotFoundError:
            return None
        return found

    async def _clean_up_failed_create(
        self, group: str, name: str, error: DriverError
    ) -> DriverError:
        """``error`` of a failed create, after a best-effort delete of the VM resource the
        accepted PUT left behind (e.g. in state Failed after AllocationFailed); the error says
        whether a VM was left and, if it could not be deleted, how to delete it."""
        try:
            left = await self._find(group, name)
        except DriverError as exc:
            note = f"could not check whether VM {name!r} was left behind ({exc})"
            return type(error)(f"{error}; {note}", code=error.code)
        if left is None:
            return error
        vm_id = str(left["id"])
        action = f"delete VM {name!r} left by the failed create"
        try:
            await self._call(
                action,
                lambda c: self._finish(c.virtual_machines.begin_delete(group, name), action),
            )
        except DriverError as exc:
            note = (
                f"the failed create left VM {vm_id} behind and deleting it failed ({exc}); "
                f"delete it with: novacron vm destroy {vm_id} --driver azure"
            )
        else:
            note = f"the VM {vm_id} that the failed create left behind was deleted"
        log.warning("%s", note)
        return type(error)(f"{error}; {note}", code=error.code)

    async def _power(self, vm_id: str, action: str, target: VMState) -> VM:
        vm = await self.get_vm(vm_id)
        group, name = self._locate(vm)
        wait = self.config.wait

        def run(client: ComputeManagementClient) -> None:
            ops = client.virtual_machines
            begin = {
                "start": ops.begin_start,
                "restart": ops.begin_restart,
                "deallocate": ops.begin_deallocate,
                "power_off": ops.begin_power_off,
            }[action]
            self._finish(begin(group, name, polling=wait), f"{action} VM {name!r}")

        await self._call(f"{action} VM {name!r}", run)
        return await self.settle(await self.get_vm(vm.id), target, self.config)

    async def start(self, vm_id: str) -> VM:
        """Start a stopped or deallocated VM."""
        self.require(DriverFeature.START_STOP)
        return await self._power(vm_id, "start", VMState.RUNNING)

    async def stop(self, vm_id: str) -> VM:
        """Stop a VM: deallocate (default, stops compute billing) or power off (``stop_mode``)."""
        self.require(DriverFeature.START_STOP)
        return await self._power(vm_id, self.config.stop_mode, VMState.STOPPED)

    async def reboot(self, vm_id: str) -> VM:
        """Restart a running VM."""
        self.require(DriverFeature.REBOOT)
        return await self._power(vm_id, "restart", VMState.RUNNING)

    async def destroy(self, vm_id: str) -> None:
        """Delete a VM (its OS disk and NIC go with it when it was created by this driver)."""
        self.require(DriverFeature.DESTROY)
        vm = await self.get_vm(vm_id)
        group, name = self._locate(vm)
        wait = self.config.wait
        action = f"delete VM {name!r}"
        await self._call(
            action,
            lambda c: self._finish(
                c.virtual_machines.begin_delete(group, name, polling=wait), action
            ),
        )

    # -- catalogue ---------------------------------------------------------------------------
    def _location(self) -> str:
        if not self.config.location:
            msg = "set drivers.settings.azure.location: Azure catalogues are per region"
            raise DriverError(msg, code="MissingParameter")
        return self.config.location

    async def list_images(self) -> list[Image]:
        """Managed images of the subscription, and versions of ``marketplace_images``."""
        self.require(DriverFeature.IMAGES)
        images = [
            custom_image_from_arm(item)
            for item in await self._call(
                "list images", lambda c: [i.as_dict() for i in c.images.list()]
            )
        ]
        location = self._location() if self.config.marketplace_images else ""
        for triple in self.config.marketplace_images:
            publisher, offer, sku = [*triple.split(":"), "", "", ""][:3]
            versions = await self._call(
                f"list versions of {triple}", _image_versions(location, publisher, offer, sku)
            )
            images += [
                Image(
                    id=f"{publisher}:{offer}:{sku}:{v['name']}",
                    name=f"{offer} {sku} {v['name']}",
                    driver=self.name,
                    extra={"kind": "marketplace", "publisher": publisher},
                )
                for v in versions
            ]
        return images

    async def list_sizes(self) -> list[Size]:
        """VM sizes offered in ``location``."""
        self.require(DriverFeature.SIZES)
        location = self._location()
        items = await self._call(
            "list VM sizes",
            lambda c: [s.as_dict() for s in c.virtual_machine_sizes.list(location)],
        )
        return [size_from_arm(item) for item in items]

    async def list_locations(self) -> list[Location]:
        """Regions the subscription can use."""
        self.require(DriverFeature.LOCATIONS)
        subscription = self.subscription_id

        def fetch(client: ComputeManagementClient) -> list[dict[str, Any]]:
            # The locations API lives in azure-mgmt-resource; one GET through the compute
            # client's pipeline (same credential, transport, endpoint) avoids that dependency.
            request = HttpRequest(
                "GET",
                f"/subscriptions/{subscription}/locations",
                params={"api-version": LOCATIONS_API_VERSION},
            )
            response = client.send_request(request)
            response.raise_for_status()
            return list(response.json().get("value", []))

        return [
            Location(
                id=str(item["name"]),
                name=str(item.get("displayName") or item["name"]),
                country=(item.get("metadata") or {}).get("geography"),
                driver=self.name,
                extra={"region_type": (item.get("metadata") or {}).get("regionType")},
            )
            for item in await self._call("list locations", fetch)
        ]

    # -- extras ------------------------------------------------------------------------------
    async def _set_tags(self, vm_id: str, change: Callable[[dict[str, str]], dict[str, str]]) -> VM:
        vm = await self.get_vm(vm_id)
        group, name = self._locate(vm)
        tags = change(dict(vm.tags))
        action = f"update tags of VM {name!r}"
        await self._call(
            action,
            lambda c: self._finish(
                c.virtual_machines.begin_update(group, name, VirtualMachineUpdate({"tags": tags})),
                action,
            ),
        )
        return await self.get_vm(vm.id)

    async def ex_set_tags(self, vm_id: str, tags: Mapping[str, str]) -> VM:
        """Add or overwrite tags on a VM."""
        return await self._set_tags(vm_id, lambda current: {**current, **tags})

    async def ex_remove_tags(self, vm_id: str, keys: list[str]) -> VM:
        """Remove tags by key from a VM."""
        return await self._set_tags(
            vm_id, lambda current: {k: v for k, v in current.items() if k not in keys}
        )

    async def close(self) -> None:
        """Close the client's connections and the credential. Safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
        close = getattr(self._credential, "close", None)
        if callable(close):
            await asyncio.to_thread(close)


def _image_versions(
    location: str, publisher: str, offer: str, sku: str
) -> Callable[[ComputeManagementClient], list[dict[str, Any]]]:
    def fetch(client: ComputeManagementClient) -> list[dict[str, Any]]:
        found = client.virtual_machine_images.list(location, publisher, offer, sku)
        return [version.as_dict() for version in found]

    return fetch
