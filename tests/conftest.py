"""Shared pytest fixtures for lxsub.

Root file systems (built once, cached under $LXSUB_TEST_CACHE or
~/.cache/lxsub-test; see tests/fixtures/rootfs.py):
    busybox_tar   Path of the BusyBox rootfs .tar.gz        (session)
    debian_tar    Path of the Debian bookworm .tar.gz       (session; tests
                  using it are marked `debian` automatically)
    local_deb     Path of hello-lxsub_1.0_all.deb           (session)
    debugger_debs Paths of the .debs of strace and gdb and what they
                  need beyond the Debian fixture (session; dpkg -i inside)

Running `lx` (see tests/fixtures/runner.py):
    host_user     HostUser, parametrized ["self", "unprivileged"] (session)
    lx            LxRunner for host_user, own LX_HOME; closed after the test
    lx_self       LxRunner for the current user only (not parametrized)
    lx_home       a fresh directory set as $LX_HOME in this process, for
                  tests that call lxsub in-process

A fixture that cannot be built (no network, not root for debootstrap) skips
its tests with the reason; with CI=true it fails them instead, unless
LXSUB_ALLOW_SKIP=1.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT / "src", REPO_ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from tests.fixtures import rootfs  # noqa: E402
from tests.fixtures.runner import (  # noqa: E402
    HostUser, LxRunner, UserUnavailable, current_user, unprivileged_user,
)


def _strict() -> bool:
    return (os.environ.get("CI", "").lower() in ("1", "true", "yes")
            and not os.environ.get("LXSUB_ALLOW_SKIP"))


def _unavailable(reason: str) -> None:
    if _strict():
        pytest.fail(f"{reason}\n(CI=true: an unavailable fixture is a failure here; "
                    "LXSUB_ALLOW_SKIP=1 skips instead)", pytrace=False)
    pytest.skip(reason)


def _build(what: str, builder):
    try:
        return builder()
    except rootfs.FixtureUnavailable as e:
        _unavailable(f"{what} fixture unavailable: {e}")
    except rootfs.FixtureBuildError as e:
        pytest.fail(f"building the {what} fixture failed: {e}", pytrace=False)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_report_header(config):
    """The platform the instances under test run on: LX_PLATFORM and
    LX_HIDE_FEATURES pass through to every `lx` the tests start
    (tests/fixtures/runner.py keeps LX_* variables)."""
    from lxsub.platform import features
    name, why = features.platform()
    hidden = ",".join(sorted(features.hidden())) or "none"
    return f"lxsub platform: {name} ({why}); hidden features: {hidden}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "debian_tar" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.debian)


@pytest.fixture(scope="session")
def busybox_tar() -> Path:
    return _build("BusyBox", rootfs.busybox_tarball)


@pytest.fixture(scope="session")
def debian_tar() -> Path:
    return _build("Debian", rootfs.debian_tarball)


@pytest.fixture(scope="session")
def local_deb() -> Path:
    return _build("local .deb", rootfs.local_deb)


@pytest.fixture(scope="session")
def debugger_debs(debian_tar) -> list[Path]:
    return _build("strace and gdb .debs", rootfs.debugger_debs)


@pytest.fixture
def lx_home(monkeypatch) -> Path:
    path = Path(tempfile.mkdtemp(prefix="lxh-"))  # short: sockets live under it
    monkeypatch.setenv("LX_HOME", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", params=["self", "unprivileged"])
def host_user(request) -> HostUser:
    if request.param == "self":
        return current_user()
    if os.geteuid() != 0:
        pytest.skip("not running as root: 'unprivileged' would be the same host user as 'self'")
    try:
        return unprivileged_user()
    except UserUnavailable as e:
        _unavailable(f"unprivileged host user unavailable: {e}")


def _runner(user: HostUser) -> LxRunner:
    try:
        return LxRunner(user)
    except UserUnavailable as e:
        _unavailable(f"cannot run lx as {user}: {e}")


@pytest.fixture
def lx(host_user) -> LxRunner:
    runner = _runner(host_user)
    yield runner
    runner.close()


@pytest.fixture
def lx_self() -> LxRunner:
    runner = _runner(current_user())
    yield runner
    runner.close()


@pytest.fixture
def lx_other_user() -> LxRunner:
    """A runner as the unprivileged host user while the tests run as root:
    for checks that another host user (root, here) is kept out."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run lx as another host user")
    runner = _runner(unprivileged_user())
    yield runner
    runner.close()


# -- distros imported once per host user, shared by integration and security tests

@pytest.fixture(scope="session", autouse=True)
def _close_imported_distros():
    yield
    from tests.integration.distros import close_all
    close_all()


@pytest.fixture(scope="session")
def busybox(host_user, busybox_tar):
    """The BusyBox fixture imported as 'bb' for host_user (shared)."""
    from tests.integration.distros import imported
    return imported(host_user, "bb", busybox_tar)


@pytest.fixture(scope="session")
def debian(host_user, debian_tar):
    """The Debian fixture imported as 'deb' for host_user (shared)."""
    from tests.integration.distros import imported
    return imported(host_user, "deb", debian_tar)
