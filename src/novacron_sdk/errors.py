"""The one error hierarchy of the SDK: every error a caller can see derives from NovaCronError.

Messages say what was wrong and what to do about it. Third-party exceptions are wrapped with
``raise ... from`` so the original stays reachable as ``__cause__``.
"""

from __future__ import annotations


class NovaCronError(Exception):
    """Base of every error raised by the SDK and its plugins."""


class ConfigError(NovaCronError):
    """The configuration is invalid: the message names the file, key path and what is allowed."""


class PluginError(NovaCronError):
    """A plugin could not be loaded, registered or called."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name in one registry."""


class UnknownNameError(PluginError, LookupError):
    """A registry was asked for a name nobody registered."""


class DriverError(NovaCronError):
    """A compute driver operation failed.

    ``code`` keeps the provider's own error code (for example ``InvalidInstanceID.NotFound``)
    when there is one.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotFoundError(DriverError, LookupError):
    """The VM, image, size or location does not exist."""


class InvalidStateError(DriverError):
    """The operation is not allowed in the VM's current state (e.g. start a running VM)."""


class FeatureNotSupportedError(DriverError):
    """The driver does not advertise the feature the caller asked for.

    Callers should check ``driver.features`` first; this error exists so that a missed check
    fails loudly instead of silently doing nothing.
    """


class QuotaExceededError(DriverError):
    """The provider or host refused the request for lack of capacity or quota."""


class InitError(NovaCronError):
    """A component failed to start, or the component graph is invalid (cycle, missing dep)."""


class MigrationError(NovaCronError):
    """A live migration failed. Before switch-over the VM keeps running at the source.

    ``report`` holds the migration's report (a MigrationReport) when one was made.
    """

    def __init__(self, message: str, *, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class MigrationAbortedError(MigrationError):
    """The migration was aborted on purpose (cancel, stall budget) and rolled back."""


class VerificationError(MigrationError):
    """Destination memory did not match the source: the destination VM was not resumed."""


class PredictionError(NovaCronError):
    """A bandwidth predictor got unusable input (infinite samples, bad settings)."""


class TransportError(NovaCronError):
    """A transport channel failed (connection lost, timeout)."""


class FrameError(TransportError):
    """A frame was malformed, oversized, corrupted or replayed, and was rejected."""


class EncodingError(NovaCronError):
    """A page batch could not be encoded or decoded."""


class DesyncError(EncodingError):
    """Encoder and decoder state diverged; decoding stopped rather than produce wrong pages."""


class StateStoreError(NovaCronError):
    """The cluster state store failed or is unreachable."""


class SecurityError(NovaCronError):
    """Authentication, key exchange or frame sealing failed."""
