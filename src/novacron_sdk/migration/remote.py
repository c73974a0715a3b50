"""Drive a migration between two agents over their control APIs, following its events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from novacron_sdk.agent.client import AgentClient

if TYPE_CHECKING:
    import httpx
from novacron_sdk.errors import MigrationError
from novacron_sdk.migration.models import (
    MigrationEvent,
    MigrationPhase,
    MigrationReport,
    MigrationSettings,
)


async def _follow(
    agent: AgentClient,
    migration_id: str,
    progress: Callable[[MigrationEvent], None] | None,
    poll_wait_s: float,
) -> None:
    after = 0
    while True:
        batch = await agent.migration_events(migration_id, after=after, wait_s=poll_wait_s)
        for raw in batch["events"]:
            if progress is not None:
                progress(MigrationEvent.model_validate(raw))
        after = int(batch["next"])
        if batch["done"]:
            return


async def migrate_via_agents(
    vm: str,
    *,
    source: str,
    destination: str,
    settings: MigrationSettings | None = None,
    progress: Callable[[MigrationEvent], None] | None = None,
    poll_wait_s: float = 2.0,
    auth: httpx.Auth | None = None,
) -> MigrationReport:
    """Migrate ``vm`` from the agent at ``source`` to the agent at ``destination``.

    Returns the report of a completed migration; raises MigrationError (with the report's
    error) when the migration failed or rolled back. ``auth`` authenticates to secured agents
    (see ``novacron_sdk.agent.auth.client_auth``).
    """
    overrides = settings.model_dump(exclude_unset=True) if settings is not None else {}
    async with AgentClient(source, auth=auth) as agent:
        started = await agent.start_migration(vm, destination, overrides)
        migration_id = str(started["id"])
        try:
            await _follow(agent, migration_id, progress, poll_wait_s)
        except asyncio.CancelledError:
            # The caller gave up (Ctrl-C): cancel on the agent, which rolls back.
            await asyncio.shield(agent.cancel_migration(migration_id))
            raise
        final = await agent.migration(migration_id)
    report = MigrationReport.model_validate(final["report"]) if final.get("report") else None
    if report is None or report.outcome is not MigrationPhase.COMPLETED:
        outcome = report.outcome.value if report else "failed"
        msg = f"migration {migration_id} of {vm} {outcome}: {final.get('error')}"
        raise MigrationError(msg, report=report)
    return report
