"""The public clients: :class:`AsyncClient`, and :class:`Client`, its sync twin for scripts.

Both pick compute drivers from the plugins (``hypervisors`` and ``clouds`` registries), build
each once with its settings from the ``drivers`` config section, and keep it for later calls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from novacron_sdk.errors import NovaCronError, UnknownNameError

if TYPE_CHECKING:
    from novacron_sdk.compute.interface import ComputeDriver
    from novacron_sdk.config import NovaCronConfig
    from novacron_sdk.migration.models import MigrationEvent, MigrationReport, MigrationSettings
    from novacron_sdk.models import VM, Image, Location, Size, VMSpec
    from novacron_sdk.plugin.manager import NovaCronPluginManager

T = TypeVar("T")
log = logging.getLogger(__name__)


class AsyncClient:
    """One async API over every compute driver the installed plugins provide.

    ``config`` wins over ``config_path``; without either, configuration is loaded from the
    usual places (``NOVACRON_CONFIG``, the default locations) with ``overrides`` on top.
    ``driver_defaults`` gives per-driver settings used where the config has none (the CLI uses
    it to give the sim driver a state file). Use it as ``async with AsyncClient() as client``
    or call :meth:`aclose` when done.
    """

    def __init__(
        self,
        *,
        config: NovaCronConfig | None = None,
        config_path: str | Path | None = None,
        plugins: NovaCronPluginManager | None = None,
        overrides: Mapping[str, Any] | None = None,
        driver_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._plugins = plugins
        self._overrides = dict(overrides or {})
        self._driver_defaults = {k: dict(v) for k, v in (driver_defaults or {}).items()}
        self._drivers: dict[str, ComputeDriver] = {}
        self._closed = False

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def plugins(self) -> NovaCronPluginManager:
        """The plugin manager (built on first use unless one was given)."""
        if self._plugins is None:
            from novacron_sdk.plugin.manager import build_plugin_manager

            self._plugins = build_plugin_manager()
        return self._plugins

    @property
    def config(self) -> NovaCronConfig:
        """The merged configuration (loaded on first use unless one was given)."""
        if self._config is None:
            from novacron_sdk.config import load_config

            self._config = load_config(
                self._config_path, plugins=self.plugins, overrides=self._overrides or None
            )
        return self._config

    def _drivers_settings(self) -> tuple[str, dict[str, dict[str, Any]]]:
        from novacron_sdk.config.sections import DriversSettings

        section = self.config.get("drivers", DriversSettings)
        return section.default, section.settings

    def drivers(self) -> dict[str, str]:
        """Every compute driver name -> its kind (``hypervisor`` or ``cloud``)."""
        return self.plugins.compute_drivers()

    def driver(self, name: str | None = None) -> ComputeDriver:
        """The driver ``name`` (default: config ``drivers.default``), built once and cached."""
        if self._closed:
            msg = "this client is closed; create a new one"
            raise NovaCronError(msg)
        default, settings = self._drivers_settings()
        name = name or default
        if name in self._drivers:
            return self._drivers[name]
        plugins = self.plugins
        if name in plugins.hypervisors:
            driver_class: type[ComputeDriver] = plugins.hypervisors.get(name)
        elif name in plugins.clouds:
            driver_class = plugins.clouds.get(name)
        else:
            known = ", ".join(sorted(plugins.compute_drivers())) or "none"
            msg = (
                f"no compute driver named {name!r}; known: {known}. "
                "Install the plugin that provides it, or check 'novacron plugins list'"
            )
            raise UnknownNameError(msg)
        merged = {**self._driver_defaults.get(name, {}), **settings.get(name, {})}
        driver = driver_class(merged)
        self._drivers[name] = driver
        return driver

    # -- VMs ---------------------------------------------------------------------------------
    async def list_vms(self, *, driver: str | None = None) -> list[VM]:
        """Every VM of ``driver``, across all pages."""
        return await self.driver(driver).list_vms()

    async def get_vm(self, vm_id: str, *, driver: str | None = None) -> VM:
        """The VM with id (or unique name) ``vm_id``."""
        return await self.driver(driver).get_vm(vm_id)

    async def create_vm(self, spec: VMSpec, *, driver: str | None = None) -> VM:
        """Create and start a VM from ``spec``."""
        return await self.driver(driver).create_vm(spec)

    async def start(self, vm_id: str, *, driver: str | None = None) -> VM:
        """Start a stopped VM."""
        return await self.driver(driver).start(vm_id)

    async def stop(self, vm_id: str, *, driver: str | None = None) -> VM:
        """Stop a running VM."""
        return await self.driver(driver).stop(vm_id)

    async def reboot(self, vm_id: str, *, driver: str | None = None) -> VM:
        """Reboot a running VM."""
        return await self.driver(driver).reboot(vm_id)

    async def destroy(self, vm_id: str, *, driver: str | None = None) -> None:
        """Destroy a VM."""
        await self.driver(driver).destroy(vm_id)

    async def list_images(self, *, driver: str | None = None) -> list[Image]:
        """Images of ``driver`` (needs the ``images`` feature)."""
        return await self.driver(driver).list_images()

    async def list_sizes(self, *, driver: str | None = None) -> list[Size]:
        """Sizes of ``driver`` (needs the ``sizes`` feature)."""
        return await self.driver(driver).list_sizes()

    async def list_locations(self, *, driver: str | None = None) -> list[Location]:
        """Locations of ``driver`` (needs the ``locations`` feature)."""
        return await self.driver(driver).list_locations()

    # -- migration ---------------------------------------------------------------------------
    async def migrate(
        self,
        vm: str,
        *,
        to: str,
        source: str,
        settings: MigrationSettings | None = None,
        progress: Callable[[MigrationEvent], None] | None = None,
    ) -> MigrationReport:
        """Live-migrate ``vm`` from the agent at URL ``source`` to the agent at URL ``to``.

        ``settings`` defaults to the ``migration`` config section; ``progress`` gets every
        migration event as it happens.
        """
        from novacron_sdk.agent.auth import client_auth
        from novacron_sdk.migration.models import MigrationSettings
        from novacron_sdk.migration.remote import migrate_via_agents

        if settings is None:
            settings = self.config.get("migration", MigrationSettings)
        auth = await client_auth(self.config, self.plugins)
        return await migrate_via_agents(
            vm, source=source, destination=to, settings=settings, progress=progress, auth=auth
        )

    # -- lifetime ----------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close every driver this client built. Safe to call twice.

        Every driver is closed even when one's ``close()`` raises; then the first such error
        is raised (later ones are logged), so no connection is left open behind it.
        """
        drivers, self._drivers = list(self._drivers.items()), {}
        self._closed = True
        errors: list[Exception] = []
        for name, driver in drivers:
            try:
                await driver.close()
            except Exception as exc:  # close the others first, raise after
                errors.append(exc)
                log.warning("driver %r failed to close: %s: %s", name, type(exc).__name__, exc)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Client:
    """The sync façade of :class:`AsyncClient`, for scripts and tools without an event loop.

    It runs one private event loop in a background thread, so drivers keep their state (open
    connections, running sim workloads) between calls. It may be called from any thread,
    including one that runs its own event loop (the call then blocks that loop until it
    returns; prefer :class:`AsyncClient` there). Calling it from its own loop's thread (for
    example from a ``progress`` callback) raises :class:`RuntimeError` instead of deadlocking.
    """

    def __init__(
        self,
        *,
        config: NovaCronConfig | None = None,
        config_path: str | Path | None = None,
        plugins: NovaCronPluginManager | None = None,
        overrides: Mapping[str, Any] | None = None,
        driver_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._async = AsyncClient(
            config=config,
            config_path=config_path,
            plugins=plugins,
            overrides=overrides,
            driver_defaults=driver_defaults,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def async_client(self) -> AsyncClient:
        """The wrapped :class:`AsyncClient` (its coroutines must run on this client's loop)."""
        return self._async

    @property
    def plugins(self) -> NovaCronPluginManager:
        """The plugin manager."""
        return self._async.plugins

    @property
    def config(self) -> NovaCronConfig:
        """The merged configuration."""
        return self._async.config

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None and self._loop.is_closed():
                msg = "this client is closed; create a new one"
                raise NovaCronError(msg)
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="novacron-client-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._thread is not None and threading.current_thread() is self._thread:
            coroutine.close()
            msg = (
                "Client was called from its own event loop thread (for example inside a "
                "progress callback); this would deadlock. Use AsyncClient in async code."
            )
            raise RuntimeError(msg)
        try:
            loop = self._ensure_loop()
        except BaseException:
            coroutine.close()
            raise
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def drivers(self) -> dict[str, str]:
        """Every compute driver name -> its kind."""
        return self._async.drivers()

    def driver(self, name: str | None = None) -> ComputeDriver:
        """The (async) driver instance, e.g. to check ``features``; call it via this client."""
        return self._async.driver(name)

    def list_vms(self, *, driver: str | None = None) -> list[VM]:
        """Every VM of ``driver``."""
        return self._call(self._async.list_vms(driver=driver))

    def get_vm(self, vm_id: str, *, driver: str | None = None) -> VM:
        """The VM with id (or unique name) ``vm_id``."""
        return self._call(self._async.get_vm(vm_id, driver=driver))

    def create_vm(self, spec: VMSpec, *, driver: str | None = None) -> VM:
        """Create and start a VM from ``spec``."""
        return self._call(self._async.create_vm(spec, driver=driver))

    def start(self, vm_id: str, *, driver: str | None = None) -> VM:
        """Start a stopped VM."""
        return self._call(self._async.start(vm_id, driver=driver))

    def stop(self, vm_id: str, *, driver: str | None = None) -> VM:
        """Stop a running VM."""
        return self._call(self._async.stop(vm_id, driver=driver))

    def reboot(self, vm_id: str, *, driver: str | None = None) -> VM:
        """Reboot a running VM."""
        return self._call(self._async.reboot(vm_id, driver=driver))

    def destroy(self, vm_id: str, *, driver: str | None = None) -> None:
        """Destroy a VM."""
        self._call(self._async.destroy(vm_id, driver=driver))

    def list_images(self, *, driver: str | None = None) -> list[Image]:
        """Images of ``driver``."""
        return self._call(self._async.list_images(driver=driver))

    def list_sizes(self, *, driver: str | None = None) -> list[Size]:
        """Sizes of ``driver``."""
        return self._call(self._async.list_sizes(driver=driver))

    def list_locations(self, *, driver: str | None = None) -> list[Location]:
        """Locations of ``driver``."""
        return self._call(self._async.list_locations(driver=driver))

    def migrate(
        self,
        vm: str,
        *,
        to: str,
        source: str,
        settings: MigrationSettings | None = None,
        progress: Callable[[MigrationEvent], None] | None = None,
    ) -> MigrationReport:
        """Live-migrate ``vm`` between two agents (see :meth:`AsyncClient.migrate`).

        ``progress`` runs on the client's loop thread: it must not call this client.
        """
        return self._call(
            self._async.migrate(vm, to=to, source=source, settings=settings, progress=progress)
        )

    def close(self) -> None:
        """Close the drivers and stop the background loop. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        loop = self._ensure_loop()
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join()
            loop.close()

    async def _shutdown(self) -> None:
        await self._async.aclose()
        # Drivers may leave background tasks (sim workloads); end them before the loop stops.
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
