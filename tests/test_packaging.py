"""The Dockerfile and docker-compose.yml agree with the code (no Docker engine runs here to try them)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from typer.testing import CliRunner

from llm4rec.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_copies_every_package_and_the_dataset() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in include:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY {package} \./{package}$", dockerfile, re.M), package
    assert "COPY data " in dockerfile
    assert "torch==2.13.0" in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.M), "the image must not run as root"


def test_compose_commands_are_valid_cli_calls() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("service", "learner"):
        command = compose["services"][name]["command"]
        assert command[0] == "llm4rec"
        result = CliRunner().invoke(app, [*command[1:2], "--help"])
        assert result.exit_code == 0, name
        for option in (a for a in command[2:] if a.startswith("--")):
            assert option in result.output, option
    dockerfile_cmd = re.search(r"^CMD (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile_cmd is not None
    assert yaml.safe_load(dockerfile_cmd.group(1)) == compose["services"]["service"]["command"]
