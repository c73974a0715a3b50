"""The ``aws`` cloud driver: EC2 instances through boto3.

boto3 is synchronous, so every API call runs in a worker thread (``asyncio.to_thread``) and
the event loop never blocks; boto3 clients are thread-safe once built. botocore's own retries
are switched off so that one policy, :mod:`novacron_sdk.clouds.retry`, decides them for every
cloud (``drivers.settings.aws.retry``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from novacron_aws.convert import (
    GONE_STATES,
    LIVE_STATES,
    image_to_model,
    instance_to_vm,
    instance_type_shape,
    instance_type_to_size,
    tag_list,
)
from novacron_aws.errors import is_retryable, map_error
from novacron_aws.settings import AwsSettings
from novacron_sdk.clouds.interface import CloudDriver, ProgressCallback
from novacron_sdk.clouds.retry import RetryPolicy, retry_async
from novacron_sdk.clouds.settings import CLOUD_FEATURES
from novacron_sdk.errors import DriverError, NotFoundError
from novacron_sdk.models import VM, DriverFeature, Image, Location, Page, Size, VMSpec, VMState

log = logging.getLogger(__name__)

_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
EXTRA_KEYS = frozenset(
    {"spot", "spot_max_price", "security_group_ids", "subnet_id", "key_name", "user_data"}
)
# DescribeInstances accepts MaxResults between 5 and 1000 only.
_MIN_PAGE, _MAX_PAGE = 5, 1000
# DescribeInstanceTypes accepts at most 100 InstanceTypes per call.
_TYPES_PER_CALL = 100


def _is_transient(exc: DriverError) -> bool:
    """Whether a mapped error came from a transient EC2 failure (worth asking again)."""
    cause = exc.__cause__
    return cause is None or is_retryable(cause)


class AwsDriver(CloudDriver):
    """Amazon EC2 instances in one region.

    Terminated and shutting-down instances are not listed: once ``destroy`` returns, the VM
    is gone for the SDK, even while EC2 still shows it for an hour.
    """

    name: ClassVar[str] = "aws"
    description: ClassVar[str] = "Amazon EC2 instances (boto3)"
    features: ClassVar[frozenset[DriverFeature]] = CLOUD_FEATURES

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.config = AwsSettings.parse(self.settings)
        self.retry_policy = RetryPolicy.from_settings(self.config.retry)
        self._session: boto3.Session | None = None
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        # Instance type -> (vCPUs, memory MiB), or None if EC2 would not say. Types never
        # change, so each is asked for once per driver.
        self._shapes: dict[str, tuple[int, int] | None] = {}

    # -- plumbing ----------------------------------------------------------------------------
    def _build_session(self) -> boto3.Session:
        cfg = self.config
        kwargs: dict[str, Any] = {"region_name": cfg.region, "profile_name": cfg.profile}
        if cfg.access_key_id or cfg.secret_access_key:
            if not (cfg.access_key_id and cfg.secret_access_key):
                msg = (
                    "drivers.settings.aws needs both access_key_id and secret_access_key "
                    "(or neither, to use the AWS default credential chain)"
                )
                raise DriverError(msg, code="PartialCredentials")
            kwargs["aws_access_key_id"] = cfg.access_key_id
            kwargs["aws_secret_access_key"] = cfg.secret_access_key.get_secret_value()
            if cfg.session_token is not None:
                kwargs["aws_session_token"] = cfg.session_token.get_secret_value()
        try:
            return boto3.Session(**kwargs)
        except BotoCoreError as exc:
            raise map_error(exc, "session setup") from exc

    def _build_client(self) -> Any:
        session = self._session = self._build_session()
        # One retry policy for every cloud: botocore makes exactly one attempt per call.
        config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
        try:
            return session.client("ec2", endpoint_url=self.config.endpoint_url, config=config)
        except BotoCoreError as exc:
            raise map_error(exc, "client setup") from exc

    async def _ec2(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._build_client)
        return self._client

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Call EC2 ``operation`` in a worker thread, with retries and mapped errors."""
        method = getattr(await self._ec2(), operation)

        async def attempt() -> dict[str, Any]:
            return cast("dict[str, Any]", await asyncio.to_thread(method, **params))

        try:
            return await retry_async(
                attempt,
                policy=self.retry_policy,
                retryable=is_retryable,
                description=f"EC2 {operation}",
            )
        except (BotoCoreError, ClientError) as exc:
            raise map_error(exc, operation) from exc

    async def _collect(self, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item under ``key`` of a NextToken-paginated ``operation``."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self._call(operation, **params, **({"NextToken": token} if token else {}))
            items.extend(page.get(key, []))
            token = page.get("NextToken")
            if not token:
                return items

    # -- VMs ---------------------------------------------------------------------------------
    async def _list_vms_page(self, token: str | None, page_size: int) -> Page[VM]:
        params: dict[str, Any] = {
            "Filters": [{"Name": "instance-state-name", "Values": list(LIVE_STATES)}],
            "MaxResults": max(_MIN_PAGE, min(_MAX_PAGE, page_size)),
        }
        if token:
            params["NextToken"] = token
        page = await self._call("describe_instances", **params)
        instances = [
            instance
            for reservation in page.get("Reservations", [])
            for instance in reservation.get("Instances", [])
        ]
        vms = await self._to_vms(instances)
        return Page[VM](items=tuple(vms), next_token=page.get("NextToken") or None)

    async def _to_vms(self, instances: list[dict[str, Any]]) -> list[VM]:
        """``instances`` as VMs, with vCPUs and memory from their instance types."""
        types = {str(i["InstanceType"]) for i in instances if i.get("InstanceType")}
        await self._learn_shapes(types)
        return [instance_to_vm(i, self._shapes.get(str(i.get("InstanceType")))) for i in instances]

    async def _learn_shapes(self, types: set[str]) -> None:
        """Ask EC2 for the vCPUs and memory of the instance types not seen yet.

        Listing VMs must not fail for this: if EC2 refuses (no ec2:DescribeInstanceTypes
        permission, a type it does not know), those VMs show 0 and a warning says why. Only
        definitive answers are kept: after a transient failure (throttling, 5xx, a dropped
        connection) the types are asked for again next time.
        """
        missing = sorted(types - self._shapes.keys())
        for start in range(0, len(missing), _TYPES_PER_CALL):
            batch = missing[start : start + _TYPES_PER_CALL]
            try:
                items = await self._collect(
                    "describe_instance_types", "InstanceTypes", InstanceTypes=batch
                )
            except DriverError as exc:
                log.warning(
                    "cannot read the vCPUs and memory of instance types %s (%s); their VMs show 0",
                    ", ".join(batch),
                    exc,
                )
                if _is_transient(exc):
                    continue  # not an answer: do not remember these types as unknown
                items = []
            found = {str(item["InstanceType"]): instance_type_shape(item) for item in items}
            self._shapes.update({name: found.get(name) for name in batch})

    async def get_vm(self, vm_id: str) -> VM:
        """The instance with id ``i-...`` or ``Name`` tag ``vm_id``."""
        if _INSTANCE_ID.match(vm_id):
            page = await self._call("describe_instances", InstanceIds=[vm_id])
            instances = [i for r in page.get("Reservations", []) for i in r.get("Instances", [])]
        else:
            filters = [
                {"Name": "tag:Name", "Values": [vm_id]},
                {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            ]
            instances = [
                i
                for r in await self._collect("describe_instances", "Reservations", Filters=filters)
                for i in r.get("Instances", [])
            ]
        live = [i for i in instances if i.get("State", {}).get("Name") not in GONE_STATES]
        if not live:
            msg = f"no EC2 instance {vm_id!r} in this region (terminated instances are not shown)"
            raise NotFoundError(msg, code="InvalidInstanceID.NotFound")
        if len(live) > 1:
            ids = ", ".join(i["InstanceId"] for i in live)
            msg = f"{len(live)} EC2 instances are named {vm_id!r} ({ids}); use an instance id"
            raise DriverError(msg, code="AmbiguousName")
        (vm,) = await self._to_vms(live)
        return vm

    async def wait_for_state(
        self,
        vm_id: str,
        target: VMState,
        *,
        timeout: float = 600.0,
        interval: float = 2.0,
        progress: ProgressCallback | None = None,
    ) -> VM:
        """Poll until the instance reaches ``target``.

        An instance that terminates meanwhile (no spot capacity, a launch failure, someone
        else's terminate) raises a DriverError with EC2's state reason, not NotFoundError.
        """
        try:
            return await super().wait_for_state(
                vm_id, target, timeout=timeout, interval=interval, progress=progress
            )
        except NotFoundError as exc:
            if not _INSTANCE_ID.match(vm_id):
                raise
            gone = await self._gone_error(vm_id, target)
            if gone is None:
                raise
            raise gone from exc

    async def _gone_error(self, vm_id: str, target: VMState) -> DriverError | None:
        """The error for instance ``vm_id`` having terminated, with its state reason; None
        if EC2 does not show it as terminated (or shutting down)."""
        try:
            page = await self._call("describe_instances", InstanceIds=[vm_id])
        except DriverError:
            return None
        found = [i for r in page.get("Reservations", []) for i in r.get("Instances", [])]
        state = str(found[0].get("State", {}).get("Name", "")) if found else ""
        if state not in GONE_STATES:
            return None
        reason = found[0].get("StateReason") or {}
        why = reason.get("Message") or found[0].get("StateTransitionReason") or "no reason given"
        msg = (
            f"EC2 instance {vm_id} became {state!r} while waiting for {target.value!r}: {why}; "
            "for a spot instance try another zone or size, else check the instance's "
            "console output and the AMI"
        )
        return DriverError(msg, code=str(reason.get("Code") or "InstanceTerminated"))

    def _run_params(self, spec: VMSpec) -> dict[str, Any]:
        unknown = set(spec.extra) - EXTRA_KEYS
        if unknown:
            msg = (
                f"spec.extra has keys the aws driver does not know: {sorted(unknown)}; "
                f"known: {sorted(EXTRA_KEYS)}"
            )
            raise DriverError(msg, code="InvalidParameter")
        image = spec.image or self.config.default_image
        if not image:
            msg = "spec.image is required (an AMI id), or set drivers.settings.aws.default_image"
            raise DriverError(msg, code="MissingParameter")
        extra = spec.extra
        params: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": spec.size or self.config.default_size,
            "MinCount": 1,
            "MaxCount": 1,
            # The same token on every retry makes RunInstances idempotent: no duplicate VMs.
            "ClientToken": uuid.uuid4().hex,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list({**spec.tags, "Name": spec.name})}
            ],
        }
        if spec.location:
            params["Placement"] = {"AvailabilityZone": spec.location}
        groups = extra.get("security_group_ids", self.config.security_group_ids)
        if groups:
            params["SecurityGroupIds"] = list(groups)
        subnet = extra.get("subnet_id", self.config.subnet_id)
        if subnet:
            params["SubnetId"] = subnet
        key_name = extra.get("key_name", self.config.key_name)
        if key_name:
            params["KeyName"] = key_name
        if extra.get("user_data"):
            params["UserData"] = str(extra["user_data"])
        if extra.get("spot"):
            spot: dict[str, Any] = {"SpotInstanceType": "one-time"}
            if extra.get("spot_max_price"):
                spot["MaxPrice"] = str(extra["spot_max_price"])
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        if spec.disk_gib:
            params["BlockDeviceMappings"] = [
                {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": spec.disk_gib}}
            ]
        return params

    async def create_vm(self, spec: VMSpec) -> VM:
        """Run one instance (``spec.extra``: spot, spot_max_price, security_group_ids,
        subnet_id, key_name, user_data) and wait until it runs if ``wait`` is on."""
        self.require(DriverFeature.CREATE)
        result = await self._call("run_instances", **self._run_params(spec))
        (vm,) = await self._to_vms(result["Instances"][:1])
        return await self.settle(vm, VMState.RUNNING, self.config)

    async def start(self, vm_id: str) -> VM:
        """Start a stopped instance."""
        self.require(DriverFeature.START_STOP)
        vm = await self.get_vm(vm_id)
        await self._call("start_instances", InstanceIds=[vm.id])
        return await self.settle(await self.get_vm(vm.id), VMState.RUNNING, self.config)

    async def stop(self, vm_id: str) -> VM:
        """Stop a running instance (EBS-backed instances keep their disks)."""
        self.require(DriverFeature.START_STOP)
        vm = await self.get_vm(vm_id)
        await self._call("stop_instances", InstanceIds=[vm.id])
        return await self.settle(await self.get_vm(vm.id), VMState.STOPPED, self.config)

    async def reboot(self, vm_id: str) -> VM:
        """Reboot a running instance (EC2 reports it as running throughout)."""
        self.require(DriverFeature.REBOOT)
        vm = await self.get_vm(vm_id)
        await self._call("reboot_instances", InstanceIds=[vm.id])
        return await self.get_vm(vm.id)

    async def destroy(self, vm_id: str) -> None:
        """Terminate an instance; it disappears from listings at once."""
        self.require(DriverFeature.DESTROY)
        vm = await self.get_vm(vm_id)
        await self._call("terminate_instances", InstanceIds=[vm.id])

    # -- catalogue ---------------------------------------------------------------------------
    async def list_images(self) -> list[Image]:
        """AMIs owned by ``image_owners`` (default: your own account)."""
        self.require(DriverFeature.IMAGES)
        # DescribeImages paginates only when MaxResults is given; ask for pages explicitly.
        images = await self._collect(
            "describe_images", "Images", Owners=self.config.image_owners, MaxResults=1000
        )
        return [image_to_model(item) for item in images]

    async def list_sizes(self) -> list[Size]:
        """Instance types offered in the region (or only ``instance_types``)."""
        self.require(DriverFeature.SIZES)
        params: dict[str, Any] = {}
        if self.config.instance_types:
            params["InstanceTypes"] = self.config.instance_types
        else:
            params["MaxResults"] = 100
        items = await self._collect("describe_instance_types", "InstanceTypes", **params)
        return [instance_type_to_size(item) for item in items]

    async def list_locations(self) -> list[Location]:
        """Regions enabled for the account, and the availability zones of this region."""
        self.require(DriverFeature.LOCATIONS)
        regions = (await self._call("describe_regions")).get("Regions", [])
        zones = (await self._call("describe_availability_zones")).get("AvailabilityZones", [])
        out = [
            Location(
                id=r["RegionName"],
                name=r["RegionName"],
                driver=self.name,
                extra={"endpoint": r.get("Endpoint")},
            )
            for r in regions
        ]
        out += [
            Location(
                id=z["ZoneName"],
                name=z["ZoneName"],
                parent=z.get("RegionName"),
                driver=self.name,
                extra={"zone_id": z.get("ZoneId"), "state": z.get("State")},
            )
            for z in zones
        ]
        return out

    # -- extras ------------------------------------------------------------------------------
    async def ex_set_tags(self, vm_id: str, tags: Mapping[str, str]) -> VM:
        """Add or overwrite tags on an instance (``Name`` renames it)."""
        vm = await self.get_vm(vm_id)
        await self._call("create_tags", Resources=[vm.id], Tags=tag_list(dict(tags)))
        return await self.get_vm(vm.id)

    async def ex_remove_tags(self, vm_id: str, keys: list[str]) -> VM:
        """Remove tags by key from an instance."""
        vm = await self.get_vm(vm_id)
        await self._call("delete_tags", Resources=[vm.id], Tags=[{"Key": k} for k in keys])
        return await self.get_vm(vm.id)

    async def ex_list_security_groups(self) -> list[dict[str, Any]]:
        """Security groups of the region: ``{"id", "name", "vpc_id", "description"}``."""
        groups = await self._collect("describe_security_groups", "SecurityGroups", MaxResults=1000)
        return [
            {
                "id": g["GroupId"],
                "name": g.get("GroupName"),
                "vpc_id": g.get("VpcId"),
                "description": g.get("Description"),
            }
            for g in groups
        ]

    async def ex_set_security_groups(self, vm_id: str, group_ids: list[str]) -> VM:
        """Replace the security groups of an instance's primary network interface."""
        vm = await self.get_vm(vm_id)
        await self._call("modify_instance_attribute", InstanceId=vm.id, Groups=list(group_ids))
        return await self.get_vm(vm.id)

    async def ex_credential_source(self) -> str:
        """Where boto3 found credentials: ``explicit``, ``env``, ``shared-credentials-file``..."""
        await self._ec2()
        session = self._session
        credentials = None if session is None else await asyncio.to_thread(session.get_credentials)
        if credentials is None:
            msg = "boto3 found no AWS credentials; set a profile, keys, or use an instance role"
            raise DriverError(msg, code="NoCredentialsError")
        return str(credentials.method)

    async def close(self) -> None:
        """Close the EC2 client's connection pool. Safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
