"""System tests: nvkmd's .deb installed in a booted Debian 12 (marker `system`).

Run them with `pytest -m system tests/system` (README, "Tests"); a plain
`pytest tests` leaves them out, because each module boots a container and
the package is built first.  One container per test module; its journal
is attached to the report of every test that fails in it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import sysdeb
import sysimage
from sysnspawn import Container, ContainerError, reap_stale

HERE = Path(__file__).resolve().parent


def _wanted(config) -> bool:
    if "system" in (config.option.markexpr or ""):
        return True
    return any(Path(a.split("::")[0]).resolve().is_relative_to(HERE) for a in config.args)


def pytest_collection_modifyitems(config, items):
    if _wanted(config):
        return
    mine = [i for i in items if Path(str(i.fspath)).resolve().is_relative_to(HERE)]
    if mine:
        config.hook.pytest_deselected(items=mine)
        items[:] = [i for i in items if i not in mine]


def pytest_sessionstart(session):
    # A SIGTERM (a CI timeout) must still power the containers off:
    # as KeyboardInterrupt, pytest runs the fixtures' teardown.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    c = item.funcargs.get("container") if hasattr(item, "funcargs") else None
    if rep.failed and isinstance(c, Container) and c.pid1:
        try:
            rep.sections.append(("container journal (last 150 lines)", c.journal(lines=150)))
        except Exception as e:       # the container itself may be what broke
            rep.sections.append(("container journal", f"unavailable: {e}\n{c.console_tail()}"))


@pytest.fixture(scope="session")
def image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("the system tests need root: debootstrap, overlay mounts, systemd-nspawn")
    reap_stale()
    try:
        return sysimage.ensure_image()
    except sysimage.ImageError as e:
        pytest.fail(f"cannot make the Debian 12 image: {e}")


@pytest.fixture(scope="session")
def debs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("debs")


@pytest.fixture(scope="session")
def nvkmd_deb(debs_dir) -> Path:
    given = os.environ.get("NVKMD_DEB", "")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"NVKMD_DEB={given}: no such file")
        return Path(given).resolve()
    try:
        return sysdeb.build(debs_dir)
    except sysdeb.DebError as e:
        pytest.fail(f"cannot build nvkmd's .deb: {e}")


@pytest.fixture(scope="session")
def next_deb(debs_dir, nvkmd_deb) -> Path:
    """The same tree with a higher version: what an upgrade installs."""
    given = os.environ.get("NVKMD_DEB_NEXT", "")
    if given:
        return Path(given).resolve()
    try:
        deb = sysdeb.build(debs_dir / "next", version=sysdeb.deb_version(nvkmd_deb) + "+systest1")
    except sysdeb.DebError as e:
        pytest.fail(f"cannot build the next .deb: {e}")
    assert sysdeb.deb_version(deb) != sysdeb.deb_version(nvkmd_deb)
    return deb


def boot(image: Path, name: str) -> Container:
    c = Container(image, name)
    try:
        return c.start()
    except ContainerError as e:
        # The image is plain Debian; if it does not boot, this machine cannot.
        pytest.skip(f"systemd-nspawn cannot boot a Debian 12 container here: {e}")


@pytest.fixture(scope="module")
def container(request, image):
    c = boot(image, Path(str(request.node.fspath)).stem)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def installed(container, nvkmd_deb) -> Container:
    """The container with `apt-get install ./nvkmd_*.deb` done and the
    service up (Type=notify: active means it sent READY)."""
    import sysnvkmd
    container.install_output = sysnvkmd.install_deb(container, nvkmd_deb).out
    container.wait("systemctl is-active nvkmd", 60, "nvkmd.service to be active after install")
    return container
