"""docker-compose.yml and the Dockerfile describe the service the README promises. No Docker
engine runs here, so the file is read with PyYAML (merge keys resolved); where docker-compose is
installed, its own `config` check runs too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATABASE_URL = "postgresql+psycopg://auditor:auditor@postgres:5432/auditor"
BROKER_URL = "redis://redis:6379/0"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_the_stack_has_its_services_on_the_right_images(services: dict) -> None:
    assert {"postgres", "redis", "migrate", "worker", "beat", "web"} <= services.keys()
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"


def test_auditor_services_share_the_database_and_broker(services: dict) -> None:
    for name in ("migrate", "worker", "beat", "web"):
        service = services[name]
        assert service["build"] == "."
        assert service["environment"]["AUDITOR_DATABASE_URL"] == DATABASE_URL
        assert service["environment"]["AUDITOR_BROKER_URL"] == BROKER_URL
    postgres = services["postgres"]["environment"]
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]) == (
        "auditor", "auditor", "auditor",
    )  # fmt: skip


def test_commands_and_start_order(services: dict) -> None:
    assert services["migrate"]["command"] == ["auditor", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["worker"]["command"] == ["auditor", "worker", "--queues", "gpu,default"]
    assert services["beat"]["command"] == ["auditor", "beat"]
    for name in ("worker", "beat"):
        after = services[name]["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully"
        assert after["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_review_app_is_published_on_the_host_loopback_only(services: dict) -> None:
    web = services["web"]
    assert web["command"] == ["auditor", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert web["ports"] == ["127.0.0.1:8000:8000"]
    assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_worker_reserves_every_gpu(services: dict) -> None:
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}


def test_the_dockerfile_installs_the_checkout_editable() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11-slim" in text
    assert "pip install -e ." in text
    for needed in ("alembic.ini", "migrations", "auditor", "workers"):
        assert f"COPY {needed}" in text  # migrate.py finds alembic.ini next to the package


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
