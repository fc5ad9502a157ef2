"""Fixtures for the security tests (same as tests/integration): distros imported once per host user."""

from __future__ import annotations

import pytest

from tests.integration.distros import close_all, imported


@pytest.fixture(scope="session", autouse=True)
def _close_imported_distros():
    yield
    close_all()


@pytest.fixture(scope="session")
def busybox(host_user, busybox_tar):
    """The BusyBox fixture imported as 'bb' for host_user (shared)."""
    return imported(host_user, "bb", busybox_tar)


@pytest.fixture(scope="session")
def debian(host_user, debian_tar):
    """The Debian fixture imported as 'deb' for host_user (shared)."""
    return imported(host_user, "deb", debian_tar)
