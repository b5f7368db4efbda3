"""Fixtures for tests that run real containers: the images and the offline data sets, built once."""

from __future__ import annotations

import subprocess

import pytest

from pushtrain import datasets, images
from pushtrain.sandbox import ROLE_LABEL, docker_client


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker():
    client = docker_client()
    client.ping()  # a clear failure when the engine is down, rather than one per test
    return client


@pytest.fixture(scope="session")
def training_images(docker) -> dict[str, str]:
    return images.ensure_all_images()


@pytest.fixture(scope="session")
def digits() -> datasets.Manifest:
    return datasets.ensure_dataset("digits")


@pytest.fixture(scope="session")
def mnist5k() -> datasets.Manifest:
    return datasets.ensure_dataset("mnist5k")


@pytest.fixture(autouse=True, scope="session")
def no_leftover_containers(docker):
    """Every test removes its containers; this fails the session if one was left behind."""
    yield
    leftovers = [c for c in docker.containers(all=True, filters={"label": ROLE_LABEL})
                 if not c["Names"][0].startswith("/pushtrain-bench-")]  # a benchmark may run beside the suite
    for container in leftovers:
        subprocess.run(["docker", "rm", "-f", container["Id"]], capture_output=True)
    assert not leftovers, f"containers left behind: {[c['Names'] for c in leftovers]}"
