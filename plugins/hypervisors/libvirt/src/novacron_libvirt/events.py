"""libvirt's event loop in a background thread, and domain lifecycle events as VMEvents.

libvirt delivers domain events only to connections opened after an event implementation was
registered, and only while someone runs that implementation. One daemon thread per process
runs ``virEventRunDefaultImpl``; callbacks run on that thread and are handed to the asyncio
loop that registered them with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import libvirt

from novacron_sdk.models import VMEvent, VMState

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_thread: threading.Thread | None = None

# (event, detail) pairs that say more than the event alone; the rest map by event.
_LIFECYCLE_STATES: dict[int, VMState] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: VMState.STOPPED,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: VMState.TERMINATED,
    libvirt.VIR_DOMAIN_EVENT_STARTED: VMState.RUNNING,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: VMState.PAUSED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: VMState.RUNNING,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: VMState.STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: VMState.STOPPING,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: VMState.PAUSED,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: VMState.ERROR,
}
_EVENT_NAMES: dict[int, str] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it on a daemon thread (once).

    Must run before the connection that wants events is opened.
    """
    global _thread  # noqa: PLW0603 - one libvirt event loop per process, by libvirt's design
    with _lock:
        if _thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _thread = threading.Thread(target=_run, name="libvirt-events", daemon=True)
        _thread.start()


def _run() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:  # pragma: no cover - libvirt internal failure
            logger.error("libvirt event loop iteration failed; events may stop")


def lifecycle_event(driver: str, vm_id: str, event: int, detail: int) -> VMEvent:
    """The VMEvent for a libvirt lifecycle ``event``/``detail`` of domain ``vm_id``."""
    state = _LIFECYCLE_STATES.get(event, VMState.UNKNOWN)
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED and detail in {
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED,
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY,
    }:
        state = VMState.MIGRATING
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and detail == (
        libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED
    ):
        state = VMState.TERMINATED
    name = _EVENT_NAMES.get(event, f"event-{event}")
    return VMEvent(
        vm_id=vm_id,
        driver=driver,
        state=state,
        reason=f"{name} (detail {detail})",
        timestamp=datetime.now(UTC),
    )
