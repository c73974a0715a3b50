"""The init orchestrator: starts components level by level, with timeouts, retries and rollback.

Components of one level start concurrently. A critical failure cancels the rest of its level,
stops what already started (in reverse order) and raises InitError; an optional failure marks
the component degraded and skips everything that depends on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import TracebackType
from typing import Any

from novacron_sdk.errors import ConfigError, InitError, PluginError
from novacron_sdk.init.interface import Component, InitContext

log = logging.getLogger(__name__)

PERMANENT_ERRORS: tuple[type[Exception], ...] = (ConfigError, PluginError)
"""Failures no retry can fix (a bad setting, an unknown or broken plugin name): a component
that raises one fails at once, whatever its ``retries``."""


class ComponentState(StrEnum):
    """Where a component is in its life."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    DEGRADED = "degraded"
    SKIPPED = "skipped"
    STOPPED = "stopped"


@dataclasses.dataclass
class ComponentStatus:
    """One component as ``novacron status`` and the agent's ``/v1/status`` show it."""

    name: str
    state: ComponentState
    critical: bool
    error: str | None = None
    attempts: int = 0
    started_in_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**dataclasses.asdict(self), "state": str(self.state)}


def retry_delay(component: type[Component], attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based): exponential backoff."""
    return float(component.retry_backoff_s * 2**attempt)


class _InterruptedError(Exception):
    """Internal: a component's start() raised SystemExit or KeyboardInterrupt.

    asyncio lets those escape the event loop straight from the task, before the orchestrator
    can stop what already started; this carries them out of the task group instead.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


class _CriticalStartError(Exception):
    """Internal: a critical component could not start; aborts the level it happened in."""

    def __init__(self, name: str, message: str, cause: BaseException | None) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.cause = cause


class Orchestrator:
    """Starts and stops a set of components in dependency order.

    ``components`` maps each name to its Component class; ``depends_on`` refers to these
    names. Use it as ``async with Orchestrator(...) as orchestrator:`` or call :meth:`start`
    and :meth:`stop`.
    """

    def __init__(self, components: Mapping[str, type[Component]], context: InitContext) -> None:
        for name, cls in components.items():
            _check_component(name, cls)
        self.context = context
        self._classes = dict(components)
        self._status = {
            name: ComponentStatus(name, ComponentState.PENDING, cls.critical)
            for name, cls in self._classes.items()
        }
        self._instances: dict[str, Component] = {}
        self._started: list[str] = []
        self._began = False

    def levels(self) -> list[list[str]]:
        """Components grouped in start order: each level only depends on earlier ones.

        Raises InitError naming every missing dependency, or every dependency cycle.
        """
        missing = [
            f"{name!r} depends on {dep!r}"
            for name, cls in self._classes.items()
            for dep in cls.depends_on
            if dep not in self._classes
        ]
        if missing:
            known = ", ".join(self._classes) or "none"
            msg = (
                f"unknown component dependencies: {'; '.join(missing)} (known components: "
                f"{known}); install the plugin that provides them or fix depends_on"
            )
            raise InitError(msg)
        waiting = {name: set(cls.depends_on) for name, cls in self._classes.items()}
        done: set[str] = set()
        levels: list[list[str]] = []
        while waiting:
            ready = [name for name, deps in waiting.items() if deps <= done]
            if not ready:
                cycles = "; ".join(" -> ".join(cycle) for cycle in _cycles(waiting))
                msg = f"component dependency cycle: {cycles}; remove one of these depends_on"
                raise InitError(msg)
            for name in ready:
                del waiting[name]
            done.update(ready)
            levels.append(ready)
        return levels

    async def start(self) -> None:
        """Start every component, level by level; raise InitError on a critical failure."""
        if self._began:
            msg = "this orchestrator was already started; build a new one to start again"
            raise InitError(msg)
        levels = self.levels()
        self._began = True
        try:
            for level in levels:
                failures = await self._start_level(level)
                if failures:
                    await self._abort(failures)
        except asyncio.CancelledError:
            self._skip_unstarted("start-up was cancelled")
            await self.stop()
            raise
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt or an unexpected error from a component: stop what
            # already started (InitError from _abort did; stopping twice is a no-op), then
            # re-raise it (a SystemExit/KeyboardInterrupt from start() as itself).
            interrupted = _interruption(exc)
            what = type(interrupted or exc).__name__
            self._skip_unstarted(f"start-up was interrupted by {what}")
            await self.stop()
            if interrupted is not None:
                raise interrupted from None
            raise

    async def _start_level(self, level: list[str]) -> list[_CriticalStartError]:
        names = [name for name in level if self._status[name].state is ComponentState.PENDING]
        try:
            async with asyncio.TaskGroup() as group:
                for name in names:
                    group.create_task(self._start_one(name), name=f"novacron-init:{name}")
        except ExceptionGroup as errors:
            critical, other = errors.split(_CriticalStartError)
            if other is not None or critical is None:
                raise
            return [e for e in _leaves(critical) if isinstance(e, _CriticalStartError)]
        return []

    async def _start_one(self, name: str) -> None:
        cls, status = self._classes[name], self._status[name]
        status.state = ComponentState.STARTING
        began = time.monotonic()
        error, cause = "", None
        for attempt in range(cls.retries + 1):
            status.attempts = attempt + 1
            deadline = asyncio.timeout(cls.timeout_s)
            try:
                instance = cls(self.context)
                async with deadline:
                    await instance.start()
            except (SystemExit, KeyboardInterrupt) as exc:
                status.state, status.error = ComponentState.FAILED, f"{type(exc).__name__}"
                raise _InterruptedError(exc) from exc
            except Exception as exc:  # any failure of a component is reported, not raised
                cause = exc
                error = (
                    f"did not start within {cls.timeout_s:g} s"
                    if isinstance(exc, TimeoutError) and deadline.expired()
                    else f"{type(exc).__name__}: {exc}"
                )
            else:
                self._instances[name] = self.context.components[name] = instance
                self._started.append(name)
                status.state, status.error = ComponentState.RUNNING, None
                status.started_in_s = time.monotonic() - began
                log.debug("component %r started in %.3f s", name, status.started_in_s)
                return
            if isinstance(cause, PERMANENT_ERRORS):
                break
            if attempt < cls.retries:
                delay = retry_delay(cls, attempt)
                log.warning(
                    "component %r failed (attempt %d of %d): %s; retrying in %g s",
                    name,
                    attempt + 1,
                    cls.retries + 1,
                    error,
                    delay,
                )
                await asyncio.sleep(delay)
        self._fail(name, error, cause)

    def _fail(self, name: str, error: str, cause: BaseException | None) -> None:
        cls, status = self._classes[name], self._status[name]
        status.error = error
        tries = f"{status.attempts} attempt{'s' if status.attempts > 1 else ''}"
        if cls.critical:
            status.state = ComponentState.FAILED
            msg = f"critical component {name!r} failed to start after {tries}: {error}"
            raise _CriticalStartError(name, msg, cause)
        status.state = ComponentState.DEGRADED
        log.warning("optional component %r is degraded after %s: %s", name, tries, error)
        for dependent, via in self._dependents(name):
            through = f" (through {via!r})" if via != name else ""
            dep_status = self._status[dependent]
            if self._classes[dependent].critical:
                dep_status.state = ComponentState.FAILED
                dep_status.error = f"its optional dependency {name!r}{through} failed: {error}"
                msg = (
                    f"critical component {dependent!r} cannot start: it depends on optional "
                    f"component {name!r}{through}, which failed: {error}"
                )
                raise _CriticalStartError(dependent, msg, cause)
            dep_status.state = ComponentState.SKIPPED
            dep_status.error = f"skipped: its dependency {name!r}{through} is degraded"

    def _dependents(self, name: str) -> list[tuple[str, str]]:
        """Everything that depends on ``name``, directly or not, with the dependency it uses."""
        found: dict[str, str] = {}
        frontier = [name]
        while frontier:
            current = frontier.pop(0)
            for other, cls in self._classes.items():
                if current in cls.depends_on and other not in found:
                    found[other] = current
                    frontier.append(other)
        return list(found.items())

    async def _abort(self, failures: list[_CriticalStartError]) -> None:
        culprits = ", ".join(repr(f.name) for f in failures)
        self._skip_unstarted(f"start-up aborted because {culprits} failed")
        await self.stop()
        detail = "; ".join(f.message for f in failures)
        msg = f"{detail}. Components already started were stopped; fix the cause and start again."
        raise InitError(msg) from failures[0].cause

    def _skip_unstarted(self, reason: str) -> None:
        for status in self._status.values():
            if status.state in (ComponentState.PENDING, ComponentState.STARTING):
                status.state, status.error = ComponentState.SKIPPED, f"not started: {reason}"

    async def stop(self) -> None:
        """Stop started components in reverse start order; a failing stop is logged, not raised."""
        while self._started:
            name = self._started.pop()
            instance = self._instances.pop(name)
            if self.context.components.get(name) is instance:
                del self.context.components[name]
            cls, status = self._classes[name], self._status[name]
            deadline = asyncio.timeout(cls.timeout_s)
            try:
                async with deadline:
                    await instance.stop()
            except Exception as exc:
                reason = (
                    f"did not stop within {cls.timeout_s:g} s"
                    if isinstance(exc, TimeoutError) and deadline.expired()
                    else f"{type(exc).__name__}: {exc}"
                )
                log.exception("component %r failed to stop: %s", name, reason)
                status.state, status.error = ComponentState.FAILED, f"stop failed: {reason}"
            else:
                status.state = ComponentState.STOPPED
                log.debug("component %r stopped", name)

    def status(self) -> list[ComponentStatus]:
        """A snapshot of every component, in start order."""
        try:
            order = [name for level in self.levels() for name in level]
        except InitError:
            order = list(self._classes)
        return [dataclasses.replace(self._status[name]) for name in order]

    def component(self, name: str) -> Component:
        """The running instance of component ``name``."""
        if name in self._instances:
            return self._instances[name]
        if name not in self._status:
            known = ", ".join(self._status) or "none"
            msg = f"no component named {name!r}; known: {known}"
            raise InitError(msg)
        status = self._status[name]
        reason = f": {status.error}" if status.error else ""
        msg = f"component {name!r} is not running ({status.state}{reason})"
        raise InitError(msg)

    async def __aenter__(self) -> Orchestrator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


def build_orchestrator(context: InitContext, names: Iterable[str] | None = None) -> Orchestrator:
    """An orchestrator for the components plugins registered (only ``names`` and their deps)."""
    registry = context.plugins.init_components
    wanted = list(registry.names() if names is None else names)
    unknown = [name for name in wanted if name not in registry]
    if unknown:
        known = ", ".join(registry.names()) or "none"
        msg = f"no component named {', '.join(map(repr, unknown))}; known: {known}"
        raise InitError(msg)
    classes: dict[str, type[Component]] = {}
    while wanted:
        name = wanted.pop(0)
        if name in classes or name not in registry:
            continue  # an unregistered dependency is reported by Orchestrator.levels()
        try:
            classes[name] = registry.get(name)
        except PluginError as exc:
            msg = f"component {name!r} could not be loaded: {exc}"
            raise InitError(msg) from exc
        wanted.extend(classes[name].depends_on)
    return Orchestrator(classes, context)


def _check_component(name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Component)):
        msg = f"component {name!r} is {cls!r}, not a subclass of novacron_sdk.init.Component"
        raise InitError(msg)
    if cls.timeout_s <= 0 or cls.retries < 0 or cls.retry_backoff_s < 0:
        msg = (
            f"component {name!r} has timeout_s={cls.timeout_s}, retries={cls.retries}, "
            f"retry_backoff_s={cls.retry_backoff_s}; timeout_s must be > 0, the others >= 0"
        )
        raise InitError(msg)


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Distinct cycles in ``graph``, where every node has a dependency inside the graph."""
    cycles: list[list[str]] = []
    seen: set[str] = set()
    for start in graph:
        path: list[str] = []
        index: dict[str, int] = {}
        node = start
        while node not in index and node not in seen:
            index[node] = len(path)
            path.append(node)
            node = min(dep for dep in graph[node] if dep in graph)
        if node in index:
            cycles.append([*path[index[node] :], node])
        seen.update(path)
    return cycles


def _interruption(exc: BaseException) -> BaseException | None:
    """The SystemExit/KeyboardInterrupt a component raised, if ``exc`` carries one."""
    if isinstance(exc, _InterruptedError):
        return exc.error
    if isinstance(exc, BaseExceptionGroup):
        for leaf in _leaves(exc):
            if isinstance(leaf, _InterruptedError):
                return leaf.error
    return None


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
