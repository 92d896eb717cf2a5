from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import polysocket
from polysocket import EngineUnavailableError, UnknownEngineError
from polysocket.plugins import EngineRegistry
from polysocket.testing import MemoryEngine, install


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """A folder on sys.path holding third-party engine distributions made by the test."""

    def add(
        dist: str, entry_name: str, module: str, source: str, group: str = "polysocket.engines"
    ) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[{group}]\n{entry_name} = {module}\n")

    monkeypatch.syspath_prepend(str(tmp_path))
    add.path = tmp_path
    return add


def test_builtin_engines_come_through_entry_points():
    registry = EngineRegistry()
    assert {"aiohttp", "websockets", "tornado"} <= set(registry.names())
    assert registry.get("aiohttp").name == "aiohttp"


def test_plugin_that_fails_to_import_is_isolated(plugin_site):
    plugin_site("broken-engine", "broken", "broken_engine_mod", "import does_not_exist_anywhere\n")
    registry = EngineRegistry()
    assert "aiohttp" in registry.names()
    rows = {row.name: row for row in registry.statuses()}
    assert rows["broken"].status == "failed to load"
    assert "does_not_exist_anywhere" in rows["broken"].detail
    assert rows["aiohttp"].status == "available"
    with pytest.raises(EngineUnavailableError, match="failed to load"):
        registry.get("broken")


def test_plugin_whose_hook_raises_is_isolated(plugin_site):
    plugin_site(
        "raising-engine",
        "raising",
        "raising_engine_mod",
        """
        from polysocket import hookimpl

        @hookimpl
        def polysocket_register_engines(register):
            raise RuntimeError("boom in register")
        """,
    )
    registry = EngineRegistry()
    assert registry.get("aiohttp")
    row = {row.name: row for row in registry.statuses()}["raising"]
    assert row.status == "failed to load" and "boom in register" in row.detail


def test_engine_with_missing_library_names_the_pip_command(plugin_site):
    plugin_site(
        "ghost-engine",
        "ghost",
        "ghost_engine_mod",
        """
        from polysocket import hookimpl
        from polysocket.transport import Engine

        class Ghost(Engine):
            name = "ghost"
            library = "ghost_library_that_is_not_installed"
            install_hint = "polysocket-ghost"

        @hookimpl
        def polysocket_register_engines(register):
            register(Ghost())
        """,
    )
    registry = EngineRegistry()
    with pytest.raises(EngineUnavailableError, match="pip install polysocket-ghost"):
        registry.get("ghost")
    row = {row.name: row for row in registry.statuses()}["ghost"]
    assert row.status == "library missing"


def test_unknown_engine_lists_the_installed_ones(recorder):
    with pytest.raises(UnknownEngineError) as info:
        polysocket.createWebsocket("ws://127.0.0.1:1/", recorder, engine="nope")
    assert "aiohttp" in str(info.value) and "'nope'" in str(info.value)
    assert not recorder.calls


def test_environment_variable_chooses_the_engine(monkeypatch, recorder):
    with install(MemoryEngine(_silent, name="memory-env")):
        monkeypatch.setenv("POLYSOCKET_ENGINE", "memory-env")
        client = polysocket.createWebsocket("ws://test/", recorder)
        assert client.engine == "memory-env"
        client.close()


async def _silent(end):
    async for _ in end:
        pass


def test_cli_lists_engines_and_a_broken_plugin(plugin_site):
    plugin_site("broken-engine", "broken", "broken_engine_mod", "raise ImportError('nope')\n")
    env = dict(os.environ, PYTHONPATH=str(plugin_site.path))
    result = subprocess.run(
        [sys.executable, "-m", "polysocket", "engines"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "available" in lines["aiohttp"]
    assert "failed to load" in lines["broken"] and "nope" in lines["broken"]
    assert set(lines) >= {"aiohttp", "websockets", "tornado", "broken"}


def test_builtin_backplane_comes_through_its_entry_point():
    registry = EngineRegistry()
    assert "memory" in registry.backplane_names()
    assert registry.backplane("memory://").name == "memory"
    assert "memory" not in registry.names()  # a backplane is not an engine


def test_unknown_backplane_scheme_names_the_installed_ones_and_hides_the_password():
    registry = EngineRegistry()
    with pytest.raises(polysocket.BackplaneError) as caught:
        registry.backplane("kafka://admin:s3cret@broker:9092/")
    message = str(caught.value)
    assert "memory://" in message
    assert "s3cret" not in message
    assert "broker:9092" in message


def test_backplane_plugin_that_fails_to_register_is_isolated(plugin_site):
    plugin_site(
        "raising-backplane",
        "raising",
        "raising_backplane_mod",
        """
        from polysocket import hookimpl

        @hookimpl
        def polysocket_register_backplanes(register):
            raise RuntimeError("boom in backplane register")
        """,
        group="polysocket.backplanes",
    )
    registry = EngineRegistry()
    rows = {row.name: row for row in registry.backplane_statuses()}
    assert rows["raising"].status == "failed to load"
    assert "boom in backplane register" in rows["raising"].detail
    assert rows["memory"].status == "available"
    assert "raising" not in {row.name for row in registry.statuses()}
    with pytest.raises(polysocket.BackplaneError, match="failed to load: backplane:raising"):
        registry.backplane("raising://x")
