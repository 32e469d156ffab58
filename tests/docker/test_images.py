"""The Dockerfiles, the compose file and the README agree with each other.

No Docker engine runs in CI, so the images are checked as text: hadolint lints
them (in ``.ci/run``), and these tests check that the compose file builds both,
with the same port, model volume and settings, and that the images install
through the same script as the README and CI.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from server.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
INSTALL = "sh docker/install.sh"


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(keyword, arguments) of each instruction, continuation lines joined."""
    text = (DOCKER / dockerfile).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            found.append((keyword.upper(), arguments.strip()))
    return found


def arguments(dockerfile: str, keyword: str) -> list[str]:
    return [args for key, args in instructions(dockerfile) if key == keyword]


def environment(dockerfile: str) -> dict[str, str]:
    pairs = [
        pair for args in arguments(dockerfile, "ENV") for pair in shlex.split(args)
    ]
    return dict(pair.split("=", 1) for pair in pairs)


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def services_by_dockerfile() -> dict[str, dict]:
    return {
        Path(service["build"]["dockerfile"]).name: service
        for service in compose()["services"].values()
    }


def test_compose_builds_each_dockerfile_from_the_repository_root() -> None:
    services = compose()["services"].values()

    assert sorted(services_by_dockerfile()) == sorted(DOCKERFILES)
    for service in services:
        context = (DOCKER / service["build"]["context"]).resolve()
        assert context == REPO_ROOT
        assert (context / service["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_and_compose_use_one_port(dockerfile: str) -> None:
    service = services_by_dockerfile()[dockerfile]
    container_ports = {mapping.split(":")[-1] for mapping in service["ports"]}

    assert arguments(dockerfile, "EXPOSE") == [
        environment(dockerfile)["LAYERSTREAM_PORT"]
    ]
    assert container_ports == {environment(dockerfile)["LAYERSTREAM_PORT"]}
    assert (
        service["environment"]["LAYERSTREAM_PORT"]
        == environment(dockerfile)["LAYERSTREAM_PORT"]
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_models_live_in_the_volume_at_layerstream_home(dockerfile: str) -> None:
    home = environment(dockerfile)["LAYERSTREAM_HOME"]
    service = services_by_dockerfile()[dockerfile]
    mounts = {volume.split(":")[1] for volume in service["volumes"]}

    assert arguments(dockerfile, "VOLUME") == [f'["{home}"]']
    assert service["environment"]["LAYERSTREAM_HOME"] == home
    assert home in mounts
    assert all(
        volume.split(":")[0] in compose()["volumes"] for volume in service["volumes"]
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_server_listens_beyond_the_container(dockerfile: str) -> None:
    assert environment(dockerfile)["LAYERSTREAM_HOST"] == "0.0.0.0"
    assert (
        services_by_dockerfile()[dockerfile]["environment"]["LAYERSTREAM_HOST"]
        == "0.0.0.0"
    )


def test_compose_sets_only_real_settings() -> None:
    for service in compose()["services"].values():
        names = {
            key.removeprefix("LAYERSTREAM_").lower() for key in service["environment"]
        }

        assert names <= set(Settings.model_fields)


def test_cuda_service_reserves_a_gpu() -> None:
    service = services_by_dockerfile()["Dockerfile.cuda"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]

    assert any("gpu" in device["capabilities"] for device in devices)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_runs_as_a_numeric_non_root_user(dockerfile: str) -> None:
    user = arguments(dockerfile, "USER")[-1]

    assert user.split(":")[0].isdigit()
    assert user.split(":")[0] != "0"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_checks_its_health_endpoint(dockerfile: str) -> None:
    (check,) = arguments(dockerfile, "HEALTHCHECK")

    assert "/health" in check
    assert "urllib" in check


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_installs_like_the_readme_and_ci(dockerfile: str) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    first_command = re.search(r"```sh\n(.+?)\n", readme)

    assert INSTALL in arguments(dockerfile, "RUN")
    assert first_command is not None and INSTALL in first_command[1]
    assert INSTALL in ci


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_context_keeps_what_the_image_copies(dockerfile: str) -> None:
    kept = {
        line.removeprefix("!").rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }

    for copy in arguments(dockerfile, "COPY"):
        sources = copy.split()[:-1]
        assert set(sources) <= kept, copy
