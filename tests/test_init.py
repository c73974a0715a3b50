"""Tests of the init orchestrator: ordering, concurrency, failures, timeouts, retries, stop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import pytest

from novacron_sdk.config import NovaCronConfig
from novacron_sdk.errors import ConfigError, InitError, UnknownNameError
from novacron_sdk.init import (
    Component,
    ComponentState,
    InitContext,
    Orchestrator,
    build_orchestrator,
    retry_delay,
)
from novacron_sdk.plugin import hookimpl
from novacron_sdk.plugin.manager import NovaCronPluginManager, build_plugin_manager


class Recorded(Component):
    """Records start and stop in ``context.values["events"]``; fails its first ``fail_times``."""

    fail_times: ClassVar[int] = 0
    fail_with: ClassVar[type[Exception]] = RuntimeError
    timeout_s: ClassVar[float] = 30.0  # only a hang reaches it, not a loaded machine

    @property
    def events(self) -> list[str]:
        recorded: list[str] = self.context.values.setdefault("events", [])
        return recorded

    async def start(self) -> None:
        attempts = self.context.values.setdefault("attempts", {})
        attempts[self.name] = attempts.get(self.name, 0) + 1
        self.events.append(f"start:{self.name}")
        await self.starting()
        if attempts[self.name] <= self.fail_times:
            raise self.fail_with(f"{self.name} boom #{attempts[self.name]}")

    async def starting(self) -> None:
        """Hook for subclasses that must wait for something."""

    async def stop(self) -> None:
        self.events.append(f"stop:{self.name}")


def comp(name: str, deps: Iterable[str] = (), base: type[Recorded] = Recorded, **attrs: Any) -> Any:
    return type(name, (base,), {"name": name, "depends_on": tuple(deps), **attrs})


def mapping(*classes: Any) -> dict[str, type[Component]]:
    return {cls.name: cls for cls in classes}


@pytest.fixture
def context() -> InitContext:
    return InitContext(config=NovaCronConfig({}), plugins=NovaCronPluginManager())


def events(context: InitContext) -> list[str]:
    return list(context.values.get("events", []))


def states(orchestrator: Orchestrator) -> dict[str, ComponentState]:
    return {status.name: status.state for status in orchestrator.status()}


async def test_diamond_levels_and_start_order(context: InitContext) -> None:
    orchestrator = Orchestrator(
        mapping(comp("d", ["b", "c"]), comp("b", ["a"]), comp("c", ["a"]), comp("a")), context
    )
    levels = orchestrator.levels()
    assert [set(level) for level in levels] == [{"a"}, {"b", "c"}, {"d"}]
    await orchestrator.start()
    started = events(context)
    assert started[0] == "start:a"
    assert set(started[1:3]) == {"start:b", "start:c"}
    assert started[3] == "start:d"
    assert set(states(orchestrator).values()) == {ComponentState.RUNNING}
    assert [s.name for s in orchestrator.status()] == [n for level in levels for n in level]
    assert set(context.components) == {"a", "b", "c", "d"}
    assert orchestrator.component("d") is context.components["d"]
    assert all(s.attempts == 1 and s.started_in_s is not None for s in orchestrator.status())
    await orchestrator.stop()


async def test_components_of_a_level_start_concurrently(context: InitContext) -> None:
    # Each waits for the other to have started: only concurrent starts can both finish.
    context.values["left"], context.values["right"] = asyncio.Event(), asyncio.Event()

    class Meet(Recorded):
        mine: ClassVar[str]
        other: ClassVar[str]
        timeout_s: ClassVar[float] = 30.0

        async def starting(self) -> None:
            self.context.values[self.mine].set()
            await self.context.values[self.other].wait()

    orchestrator = Orchestrator(
        mapping(
            comp("left", base=Meet, mine="left", other="right"),
            comp("right", base=Meet, mine="right", other="left"),
        ),
        context,
    )
    async with orchestrator:
        assert states(orchestrator) == {"left": "running", "right": "running"}


async def test_cycle_is_reported_before_anything_starts(context: InitContext) -> None:
    classes = mapping(
        comp("free"), comp("a", ["c"]), comp("b", ["a"]), comp("c", ["b"]), comp("d", ["a"])
    )
    classes |= mapping(comp("self", ["self"]))
    orchestrator = Orchestrator(classes, context)
    with pytest.raises(InitError, match="cycle") as caught:
        await orchestrator.start()
    assert "a -> c -> b -> a" in str(caught.value)
    assert "self -> self" in str(caught.value)
    assert "d ->" not in str(caught.value)  # d only depends on the cycle
    assert events(context) == []
    assert set(states(orchestrator).values()) == {ComponentState.PENDING}


async def test_missing_dependency_is_reported_before_anything_starts(
    context: InitContext,
) -> None:
    orchestrator = Orchestrator(mapping(comp("free"), comp("api", ["ghost"])), context)
    with pytest.raises(InitError, match=r"'api' depends on 'ghost'"):
        orchestrator.levels()
    with pytest.raises(InitError, match="ghost"):
        await orchestrator.start()
    assert events(context) == []


async def test_critical_failure_cancels_level_and_stops_in_reverse(context: InitContext) -> None:
    context.values["sibling_started"] = asyncio.Event()

    class Sibling(Recorded):
        async def starting(self) -> None:
            self.context.values["sibling_started"].set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.events.append("cancelled:sibling")
                raise

    class Failing(Recorded):
        fail_times: ClassVar[int] = 1

        async def starting(self) -> None:
            await self.context.values["sibling_started"].wait()

    orchestrator = Orchestrator(
        mapping(
            comp("a"),
            comp("b", ["a"]),
            comp("c", ["b"], base=Failing),
            comp("sibling", ["b"], base=Sibling),
            comp("later", ["c"]),
        ),
        context,
    )
    with pytest.raises(InitError, match=r"critical component 'c' failed.*c boom #1") as caught:
        await orchestrator.start()
    assert isinstance(caught.value.__cause__, RuntimeError)
    log = events(context)
    assert log[:2] == ["start:a", "start:b"]
    assert "cancelled:sibling" in log
    assert log[-2:] == ["stop:b", "stop:a"]
    assert "stop:sibling" not in log
    assert "start:later" not in log
    assert states(orchestrator) == {
        "a": "stopped",
        "b": "stopped",
        "c": "failed",
        "sibling": "skipped",
        "later": "skipped",
    }
    assert context.components == {}


async def test_optional_failure_degrades_and_skips_dependents(context: InitContext) -> None:
    orchestrator = Orchestrator(
        mapping(
            comp("metrics", critical=False, fail_times=1),
            comp("dashboard", ["metrics"], critical=False),
            comp("exporter", ["dashboard"], critical=False),
            comp("api"),
        ),
        context,
    )
    await orchestrator.start()
    status = {s.name: s for s in orchestrator.status()}
    assert status["metrics"].state is ComponentState.DEGRADED
    assert status["metrics"].error == "RuntimeError: metrics boom #1"
    assert status["dashboard"].state is ComponentState.SKIPPED
    assert status["exporter"].state is ComponentState.SKIPPED
    assert "'metrics'" in (status["exporter"].error or "")
    assert status["api"].state is ComponentState.RUNNING
    assert set(context.components) == {"api"}
    assert "start:dashboard" not in events(context)
    with pytest.raises(InitError, match="not running"):
        orchestrator.component("metrics")
    with pytest.raises(InitError, match="no component named 'nope'"):
        orchestrator.component("nope")
    json.dumps([s.as_dict() for s in orchestrator.status()])
    await orchestrator.stop()


async def test_critical_dependent_of_optional_failure_is_critical(context: InitContext) -> None:
    orchestrator = Orchestrator(
        mapping(
            comp("base"),
            comp("cache", critical=False, fail_times=1),
            comp("warmer", ["cache"], critical=False),
            comp("api", ["warmer", "base"]),
        ),
        context,
    )
    with pytest.raises(InitError) as caught:
        await orchestrator.start()
    message = str(caught.value)
    assert "critical component 'api' cannot start" in message
    assert "optional component 'cache' (through 'warmer')" in message
    assert events(context)[-1] == "stop:base"
    assert states(orchestrator)["api"] is ComponentState.FAILED


async def test_timeout(context: InitContext) -> None:
    class Hangs(Recorded):
        timeout_s: ClassVar[float] = 0.05

        async def starting(self) -> None:
            await asyncio.Event().wait()

    class RaisesTimeout(Recorded):
        critical: ClassVar[bool] = False
        fail_times: ClassVar[int] = 1
        fail_with: ClassVar[type[Exception]] = TimeoutError

    orchestrator = Orchestrator(
        mapping(comp("own", base=RaisesTimeout), comp("hangs", base=Hangs)), context
    )
    with pytest.raises(InitError, match=r"'hangs' failed to start after 1 attempt: did not start"):
        await orchestrator.start()
    status = {s.name: s for s in orchestrator.status()}
    assert status["hangs"].error == "did not start within 0.05 s"
    # A component's own TimeoutError is its error, not the orchestrator's deadline.
    assert status["own"].error == "TimeoutError: own boom #1"


async def test_retries_succeed_on_nth_attempt(context: InitContext) -> None:
    orchestrator = Orchestrator(
        mapping(
            comp("flaky", fail_times=2, retries=3, retry_backoff_s=0.001),
            comp("hopeless", critical=False, fail_times=9, retries=2, retry_backoff_s=0.001),
        ),
        context,
    )
    await orchestrator.start()
    status = {s.name: s for s in orchestrator.status()}
    assert (status["flaky"].state, status["flaky"].attempts) == (ComponentState.RUNNING, 3)
    assert status["flaky"].error is None
    assert (status["hopeless"].state, status["hopeless"].attempts) == ("degraded", 3)
    assert events(context).count("start:flaky") == 3
    await orchestrator.stop()


@pytest.mark.parametrize("permanent", [UnknownNameError, ConfigError])
async def test_permanent_errors_are_not_retried(
    context: InitContext, caplog: pytest.LogCaptureFixture, permanent: type[Exception]
) -> None:
    """An unknown name or a bad setting fails at once: no retry can fix it."""
    orchestrator = Orchestrator(
        mapping(comp("named", fail_times=9, fail_with=permanent, retries=3, retry_backoff_s=60)),
        context,
    )
    with (
        caplog.at_level(logging.WARNING, logger="novacron_sdk.init.orchestrator"),
        pytest.raises(InitError, match=r"'named' failed to start after 1 attempt: ") as caught,
    ):
        await asyncio.wait_for(orchestrator.start(), 10)  # a retry would wait 60 s
    assert f"{permanent.__name__}: named boom #1" in str(caught.value)
    assert isinstance(caught.value.__cause__, permanent)
    assert events(context).count("start:named") == 1
    status = {s.name: s for s in orchestrator.status()}
    assert (status["named"].state, status["named"].attempts) == (ComponentState.FAILED, 1)
    assert "'named' failed (attempt" not in caplog.text


def test_retry_delay_is_exponential() -> None:
    cls = comp("x", retry_backoff_s=0.5)
    assert [retry_delay(cls, attempt) for attempt in range(4)] == [0.5, 1.0, 2.0, 4.0]


async def test_backoff_waits_and_cancel_stops_started(context: InitContext) -> None:
    context.values["failed_once"] = asyncio.Event()

    class SignalsFailure(Recorded):
        fail_times: ClassVar[int] = 1
        retries: ClassVar[int] = 1
        retry_backoff_s: ClassVar[float] = 3600.0

        async def starting(self) -> None:
            self.context.values["failed_once"].set()

    orchestrator = Orchestrator(mapping(comp("a"), comp("b", ["a"], base=SignalsFailure)), context)
    task = asyncio.create_task(orchestrator.start())
    await context.values["failed_once"].wait()
    for _ in range(20):  # a retry without backoff would have happened by now
        await asyncio.sleep(0)
    assert events(context).count("start:b") == 1
    assert states(orchestrator)["b"] is ComponentState.STARTING
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events(context)[-1] == "stop:a"
    assert states(orchestrator) == {"a": "stopped", "b": "skipped"}


async def test_stop_order_is_reversed_and_survives_errors(
    context: InitContext, caplog: pytest.LogCaptureFixture
) -> None:
    class BadStop(Recorded):
        async def stop(self) -> None:
            await super().stop()
            raise OSError("socket already closed")

    orchestrator = Orchestrator(
        mapping(comp("c", ["b"]), comp("b", ["a"], base=BadStop), comp("a")), context
    )
    await orchestrator.start()
    with caplog.at_level(logging.ERROR, logger="novacron_sdk.init.orchestrator"):
        await orchestrator.stop()
    assert events(context)[-3:] == ["stop:c", "stop:b", "stop:a"]
    status = {s.name: s for s in orchestrator.status()}
    assert status["b"].state is ComponentState.FAILED
    assert status["b"].error == "stop failed: OSError: socket already closed"
    assert (status["a"].state, status["c"].state) == ("stopped", "stopped")
    assert "'b' failed to stop" in caplog.text
    assert context.components == {}
    await orchestrator.stop()  # stopping twice is harmless
    assert events(context).count("stop:a") == 1


async def test_start_twice_and_invalid_components(context: InitContext) -> None:
    orchestrator = Orchestrator(mapping(comp("a")), context)
    async with orchestrator:
        with pytest.raises(InitError, match="already started"):
            await orchestrator.start()
    with pytest.raises(InitError, match="not a subclass"):
        Orchestrator({"x": object}, context)  # type: ignore[dict-item]
    with pytest.raises(InitError, match="timeout_s must be > 0"):
        Orchestrator(mapping(comp("y", timeout_s=0)), context)


class AppPlugin:
    """A plugin contributing three components; ``api`` needs ``db``."""

    @hookimpl
    def novacron_register_init_components(self, registry: Any) -> None:
        registry.register("db", comp("db"))
        registry.register("api", comp("api", ["db"]))
        registry.register("extra", comp("extra", critical=False))
        registry.register("broken", "tests.no_such_module:Component")


async def test_build_orchestrator_from_plugin_components() -> None:
    plugins = NovaCronPluginManager()
    assert plugins.register_plugin("test-plugin", AppPlugin())
    context = InitContext(config=NovaCronConfig({}), plugins=plugins)
    orchestrator = build_orchestrator(context, ["api"])
    assert orchestrator.levels() == [["db"], ["api"]]
    async with orchestrator:
        assert set(context.components) == {"db", "api"}
    with pytest.raises(InitError, match="'broken' could not be loaded"):
        build_orchestrator(context)
    with pytest.raises(InitError, match="no component named 'nope'; known: db, api"):
        build_orchestrator(context, ["nope"])


async def test_build_orchestrator_next_to_builtin_components() -> None:
    # builtin-core registers the agent's components; skip until that module exists.
    pytest.importorskip("novacron_sdk.agent.components")
    plugins = build_plugin_manager(autoload=False, plugins=[("test-plugin", AppPlugin())])
    context = InitContext(config=NovaCronConfig({}), plugins=plugins)
    orchestrator = build_orchestrator(context, ["api", "extra"])
    assert [set(level) for level in orchestrator.levels()] == [{"db", "extra"}, {"api"}]
    async with orchestrator:
        assert set(context.components) == {"db", "api", "extra"}
