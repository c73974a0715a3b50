"""The agent's init components: driver, service, control API (started by the orchestrator)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from novacron_sdk.config.checks import check_plugin_settings
from novacron_sdk.config.sections import (
    AgentSettings,
    CodecsSettings,
    DriversSettings,
    TransportsSettings,
)
from novacron_sdk.errors import InitError
from novacron_sdk.init.interface import Component
from novacron_sdk.migration.models import MigrationSettings

if TYPE_CHECKING:
    from novacron_sdk.agent.service import AgentService
    from novacron_sdk.hypervisors.interface import HypervisorDriver
    from novacron_sdk.plugin.registry import Registry

log = logging.getLogger(__name__)


class DriverComponent(Component):
    """Connects the hypervisor driver named by ``agent.driver``."""

    name: ClassVar[str] = "agent.driver"
    timeout_s: ClassVar[float] = 30.0
    retries: ClassVar[int] = 2

    async def start(self) -> None:
        """Build the driver with its ``drivers.settings`` entry."""
        agent = self.context.config.get("agent", AgentSettings)
        drivers = self.context.config.get("drivers", DriversSettings)
        cls = self.context.plugins.hypervisors.get(agent.driver)
        settings = dict(drivers.settings.get(agent.driver, {}))
        if agent.name and agent.driver == "sim":
            settings.setdefault("host_name", agent.name)
        self.driver: HypervisorDriver = cls(settings)
        try:
            await self.driver.list_hosts()  # fail here, not at the first request
        except BaseException:
            await self.driver.close()  # stop() only runs for components that started
            raise
        self.context.values["driver"] = self.driver

    async def stop(self) -> None:
        """Close the driver."""
        await self.driver.close()


class ServiceComponent(Component):
    """The agent service: VMs, migrations, migration listeners."""

    name: ClassVar[str] = "agent.service"
    depends_on: ClassVar[tuple[str, ...]] = ("agent.driver", "cluster.store")

    async def start(self) -> None:
        """Create the service."""
        from novacron_sdk.agent.service import AgentService

        agent = self.context.config.get("agent", AgentSettings)
        transports = self.context.config.get("transports", TransportsSettings)
        codecs = self.context.config.get("codecs", CodecsSettings)
        # Unknown transport, codec and predictor names and settings their plugins reject fail
        # here, all at once and naming what to fix, not mid-migration (as `config validate`).
        await asyncio.to_thread(
            check_plugin_settings, self.context.config, self.context.plugins, drivers=False
        )
        self.service = AgentService(
            plugins=self.context.plugins,
            driver=self.context.values["driver"],
            name=agent.name or f"{agent.host}:{agent.port}",
            migration_host=agent.migration_host,
            migration_port=agent.migration_port,
            migration_advertise=agent.migration_advertise,
            migration_defaults=self.context.config.get("migration", MigrationSettings),
            capacity=(agent.vcpus, agent.memory_mib),
            incoming_timeout_s=agent.incoming_timeout_s,
            finished_retention_s=agent.finished_retention_s,
            transport_settings=transports.settings,
            codec_settings=codecs.settings,
            security=self.context.values.get("agent.security"),
        )
        # None unless cluster.enabled: then migrations are fenced by VM ownership records.
        self.service.state_store = self.context.values.get("state_store")
        await self.service.start()
        self.context.values["service"] = self.service

    async def stop(self) -> None:
        """Cancel migrations and close listeners."""
        await self.service.close()


class ControlApiComponent(Component):
    """Serves the HTTP control API with uvicorn; writes ``ready_file`` once listening."""

    name: ClassVar[str] = "agent.api"
    depends_on: ClassVar[tuple[str, ...]] = ("agent.service",)

    async def start(self) -> None:
        """Bind and serve in the background."""
        import uvicorn

        from novacron_sdk.agent.app import create_app

        agent = self.context.config.get("agent", AgentSettings)
        service: AgentService = self.context.values["service"]
        status = self.context.values.get("status_provider")
        app = create_app(service, status)
        security = self.context.values.get("agent.security")
        # With security enabled only enrolled, authenticated peers get past this wrapper;
        # GET /health stays open and reveals nothing.
        # The app bounds request bodies itself (RequestSizeLimit, in create_app); the
        # security wrapper bounds what it reads before handing a request on.
        asgi: Any = security.wrap_asgi(app) if security is not None else app
        config = uvicorn.Config(
            asgi,
            host=agent.host,
            port=agent.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self.server = _Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                exc = self.task.exception()
                msg = f"control API could not listen on {agent.host}:{agent.port}: {exc}"
                raise InitError(msg)
            await asyncio.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        service.url = f"http://{agent.host}:{port}"
        if agent.name is None:
            service.name = f"{agent.host}:{port}"
        ready = self.context.values.get("ready_file")
        if ready:
            info: dict[str, Any] = {"url": service.url, "name": service.name}
            await asyncio.to_thread(_write_atomically, Path(ready), json.dumps(info))
        log.debug("control API of agent %s listening at %s", service.name, service.url)

    async def stop(self) -> None:
        """Stop serving: long-polls answer at once, then the server waits for requests."""
        service: AgentService = self.context.values["service"]
        await service.stopping()
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)


class _Server:
    """uvicorn's Server without its signal capture: the agent handles signals itself."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

        return Server(config)


def _write_atomically(path: Path, text: str) -> None:
    """A reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def register_components(registry: Registry[type[Component]]) -> None:
    """Register the agent's components."""
    registry.register("agent.driver", DriverComponent, description="Hypervisor driver")
    registry.register("agent.service", ServiceComponent, description="VMs and migrations")
    registry.register("agent.api", ControlApiComponent, description="HTTP control API")
