"""The component contract for the init orchestrator."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from novacron_sdk.config import NovaCronConfig
    from novacron_sdk.plugin.manager import NovaCronPluginManager


@dataclass
class InitContext:
    """What components share: config, plugins, and the components already started."""

    config: NovaCronConfig
    plugins: NovaCronPluginManager
    components: dict[str, Component] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


class Component(ABC):
    """Something a process starts and stops: a server, a store connection, a driver.

    ``critical`` components abort start-up when they fail (after ``retries``); optional ones
    are logged, marked degraded and shown by ``novacron status``.
    """

    name: ClassVar[str] = ""
    depends_on: ClassVar[tuple[str, ...]] = ()
    critical: ClassVar[bool] = True
    timeout_s: ClassVar[float] = 30.0
    retries: ClassVar[int] = 0
    retry_backoff_s: ClassVar[float] = 0.5

    def __init__(self, context: InitContext) -> None:
        self.context = context

    @abstractmethod
    async def start(self) -> None:
        """Start; raise to fail. Must finish within ``timeout_s``."""

    async def stop(self) -> None:  # noqa: B027 - components that hold nothing need no stop
        """Stop; called in reverse start order, also after a failed start-up."""
