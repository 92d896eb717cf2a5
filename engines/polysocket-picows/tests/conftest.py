"""These tests use the conformance plugin's fixtures: ``peer`` (a test that takes it runs
against both echo peers) and ``engine`` (picows, unless ``--polysocket-engine`` names other
engines)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("polysocket_engines", None):
        config.option.polysocket_engines = ["picows"]
