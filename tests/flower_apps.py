"""Hostile Flower apps for the attack tests: the app descriptor they share (the code differs per attack)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_app_descriptor(app: Path, *, name: str, version: str, publisher: str, serverapp: str, clientapp: str) -> Path:
    """``app/pyproject.toml`` of a Flower app (what ``flwr run <app>`` builds into a FAB)."""
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "{name}"
        version = "{version}"
        dependencies = []

        [tool.hatch.build.targets.wheel]
        packages = ["."]

        [tool.flwr.app]
        publisher = "{publisher}"

        [tool.flwr.app.components]
        serverapp = "{serverapp}"
        clientapp = "{clientapp}"

        [tool.flwr.app.config]
        """))
    return app
