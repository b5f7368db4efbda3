"""Fixtures for tests that run real containers: the images and the offline data sets, built once."""

from __future__ import annotations

import subprocess

import pytest

from pushtrain import datasets, images
from pushtrain.sandbox import docker_client
from pushtrain.supervision import ROLE_LABEL, STATE_DIR_LABEL


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
def no_leftover_containers(docker, tmp_path_factory):
    """Every test removes its containers; this fails the session if one was left behind.

    Only this session's containers count (their state dir is under its temporary directory): a benchmark or
    another test session may run beside it on the same engine, and its containers are none of ours.
    """
    ours = str(tmp_path_factory.getbasetemp())
    yield
    leftovers = [
        c
        for c in docker.containers(all=True, filters={"label": ROLE_LABEL})
        if (c.get("Labels") or {}).get(STATE_DIR_LABEL, "").startswith(ours)
    ]
    for container in leftovers:
        subprocess.run(["docker", "rm", "-f", container["Id"]], capture_output=True)
    assert not leftovers, f"containers left behind: {[c['Names'] for c in leftovers]}"
