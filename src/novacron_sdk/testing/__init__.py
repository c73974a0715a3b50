"""Test helpers for plugin authors: fixtures (pytest11 plugin) and contract test suites.

Installing ``novacron-sdk`` registers the pytest plugin :mod:`novacron_sdk.testing.pytest_plugin`
(entry point ``pytest11``), which provides these fixtures to every test session:

``novacron_plugins``
    A fresh plugin manager with entry-point autoloading on (so your installed plugin is in it).
``novacron_config``
    The merged configuration from defaults, with every state file under ``tmp_path``
    (``novacron_config_path`` is its file; the caller's environment is ignored).
``sim_driver``
    A builtin ``SimDriver`` whose VM records live in ``tmp_path``; closed after the test.
``novacron_cli``
    Runs ``novacron`` in-process: ``result = novacron_cli("plugins", "list", "--json")`` gives
    ``result.exit_code``, ``result.stdout``, ``result.stderr`` and ``result.json()``.

(pytest-asyncio, which the test extra installs, adds ``unused_tcp_port`` and
``unused_tcp_port_factory`` for servers bound to 127.0.0.1.)

Contract suites are plain test classes. Subclass one in your test module and provide the one
fixture it names; every implementation of a contract must pass its suite:

(all in ``novacron_sdk.testing``; the fixture each needs is in brackets)

- ``compute.ComputeDriverContract`` (``driver``): every hypervisor and cloud driver.
- ``compute.HypervisorMigrationContract`` (``source_driver``, ``sink_driver``): hypervisors
  that are live-migration ends.
- ``transport.TransportContract`` (``transport``): transports.
- ``codec.CodecContract`` (``codec``): page codecs.
- ``predictor.PredictorContract`` (``predictor``): bandwidth predictors.
- ``placement.PlacementContract`` (``policy``): placement policies.
- ``store.StateStoreContract`` (``store``): state stores.

``waiting.eventually(check, what)`` waits for a condition in an async test (instead of a fixed
sleep followed by an assertion, which fails on a slow machine); ``waiting.running(coro)`` runs a
coroutine as a task for a block and cancels and awaits it on the way out, even when the test
fails half way. ``faults.hold_sink_step(driver, step, reached=..., release=...)`` holds a step
of a migration destination (its page check, its resume) so that a race with a cancel or a
shutdown happens for certain.

For example::

    import pytest
    from novacron_sdk.testing.compute import ComputeDriverContract

    class TestMyDriver(ComputeDriverContract):
        @pytest.fixture
        def driver(self):
            return MyDriver({"endpoint": "..."})

The suite modules are not imported by this package or by the pytest plugin, so importing
``novacron_sdk.testing`` costs nothing and cannot create import cycles; import the suite you
need in your test module. The fixture name of each suite is documented in its class docstring.
"""
