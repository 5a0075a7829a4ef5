"""The system-group exception of the trust rules (trust.py): Ubuntu's
/var/log is root:syslog 0775, the parent of systemd's LogsDirectory=.  Real
groups (adm, and ones made with groupadd/useradd for the test), real ACLs
(setfacl), a real test root under a /tmp directory only root can change."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from helpers import TestRoot as Root
from helpers import need_kernels, run_nvkmd
from nvkmd.errors import ErrorCode
from nvkmd.paths import Paths
from nvkmd.system import trust

ADM = grp.getgrnam("adm").gr_gid      # Debian's static system group 4, no members here


@pytest.fixture
def base():
    d = Path(tempfile.mkdtemp(prefix="nvkmd-trustgrp-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _group_dir(path: Path, gid: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, gid)
    path.chmod(0o775)
    return path


@pytest.fixture
def account():
    """Make real groups and users with groupadd/useradd; remove them after."""
    made: list[tuple[str, str]] = []

    def make(kind: str, *args: str) -> str:
        name = f"nvkt{uuid.uuid4().hex[:8]}"
        subprocess.run([f"{kind}add", *args, name], check=True, capture_output=True)
        made.append((kind, name))
        return name
    yield make
    for kind, name in reversed(made):
        subprocess.run([f"{kind}del", name], capture_output=True)


def test_a_parent_writable_by_a_system_group_is_accepted(base):
    log = _group_dir(base / "var" / "log", ADM)
    assert trust.check_dir(log / "nvkmd", "log directory") == log / "nvkmd"


def test_the_checked_directory_itself_may_not_be_group_writable(base):
    log = _group_dir(base / "log", ADM)
    with pytest.raises(trust.Untrusted, match=f"{log} is writable by group {ADM}") as e:
        trust.check_dir(log, "log directory")
    assert e.value.code is ErrorCode.CONFIG


def test_a_user_group_above_the_system_range_is_refused(base, account):
    gid = grp.getgrnam(account("group")).gr_gid
    assert gid >= 1000
    log = _group_dir(base / "log", gid)
    with pytest.raises(trust.Untrusted,
                       match=f"{log} is writable by group {gid}, not a system group"):
        trust.check_dir(log / "nvkmd", "log directory")


def test_a_system_group_with_a_login_account_in_it_is_refused(base, account):
    group = account("group", "--system")
    gid = grp.getgrnam(group).gr_gid
    assert gid < 1000
    user = account("user", "--no-create-home", "--no-user-group", "--groups", group)
    log = _group_dir(base / "log", gid)
    with pytest.raises(trust.Untrusted, match=f"whose member {user} is a login account"):
        trust.check_dir(log / "nvkmd", "log directory")
    # The same as the user's primary group.
    subprocess.run(["gpasswd", "-d", user, group], check=True, capture_output=True)
    trust.check_dir(log / "nvkmd", "log directory")
    subprocess.run(["usermod", "-g", group, user], check=True, capture_output=True)
    with pytest.raises(trust.Untrusted, match=f"whose member {user} is a login account"):
        trust.check_dir(log / "nvkmd", "log directory")


def test_a_system_group_parent_with_an_acl_is_refused(base):
    log = _group_dir(base / "log", ADM)
    # nobody gets write through the ACL; the group bits become its mask (rwx).
    subprocess.run(["setfacl", "-m", "u:nobody:rwx", str(log)], check=True)
    assert os.stat(log).st_mode & 0o777 == 0o775
    with pytest.raises(trust.Untrusted, match=f"{log} is writable by group {ADM} and has an ACL"):
        trust.check_dir(log / "nvkmd", "log directory")
    subprocess.run(["setfacl", "-b", str(log)], check=True)
    trust.check_dir(log / "nvkmd", "log directory")


def test_inside_a_source_tree_a_system_group_is_not_enough(base):
    r = Root(base / "root")
    tree = r.add_tiny_source() / "kernel-open"
    _group_dir(tree / "nvidia", ADM)
    with pytest.raises(trust.Untrusted, match=f"{tree / 'nvidia'} is writable by group {ADM}"):
        trust.check_tree(tree)
    # Above the tree it is a parent like any other.
    (tree / "nvidia").chmod(0o755)
    _group_dir(r.path / "usr" / "src", ADM)
    assert trust.check_tree(tree) == tree


def test_the_roots_login_defs_sets_the_bound(base):
    root = base / "root"
    root.mkdir(mode=0o755)
    _group_dir(root / "var" / "log", ADM)
    paths = Paths.build(root)
    trust.check_dirs(paths)
    (root / "etc").mkdir(mode=0o755)
    paths.login_defs.write_text(f"# a comment\nSYS_GID_MIN 1\nSYS_GID_MAX\t{ADM - 1}\n")
    with pytest.raises(trust.Untrusted,
                       match=f"refusing log directory .*gid above {ADM - 1}"):
        trust.check_dirs(paths)


def test_nvkmd_starts_under_an_ubuntu_style_var_log_and_refuses_a_user_group(base, account,
                                                                           monkeypatch):
    monkeypatch.setenv("NVKMD_RUNNING_KERNEL", "0.0.0-not-installed")
    k = need_kernels(1)[-1]
    r = Root(base / "root")
    r.add_kernel(k)
    r.add_tiny_source()
    log = _group_dir(r.path / "var" / "log", ADM)
    proc = run_nvkmd("--once", "--root", str(r.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (log / "nvkmd" / k / "latest.log").is_file()
    gid = grp.getgrnam(account("group")).gr_gid
    os.chown(log, 0, gid)
    proc = run_nvkmd("--once", "--root", str(r.path))
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert f"refusing log directory {log / 'nvkmd'}: {log} is writable by group {gid}" \
        in proc.stderr
