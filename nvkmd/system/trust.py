"""What nvkmd may trust: files and directories only root can have changed.

nvkmd runs the driver's Makefiles as root and installs what they produce,
so everything that decides what it builds or installs (the source tree,
the state, cache and log directories) must be out of reach of every other
user.  The rules, applied to the path as the kernel resolves it:

- every directory on the way from ``/`` and every entry in it is owned by
  root, and no directory or file is writable by its group or by others
  (nor through an ACL, whose mask shows in the group bits): such a user
  could replace what nvkmd is about to read;
- two exceptions, for the parents only (never the checked directory
  itself, never anything inside a source tree):

  * a root-owned sticky directory (``/tmp``, ``/var/tmp``) may be
    world-writable, because others cannot rename or remove an entry they do
    not own there (sudo and OpenSSH treat it the same way);
  * a root-owned directory may be writable by a *system group* (Ubuntu's
    ``/var/log`` is ``root:syslog 0775``, the parent of systemd's
    ``LogsDirectory=``): one whose gid is at most ``SYS_GID_MAX`` (the
    root's ``/etc/login.defs``, else 999), which exists, whose every member
    (listed, or by primary group) is a system account (uid at most
    ``SYS_UID_MAX``, else 999), and only if the directory has no POSIX ACL
    (with one, the group bits are the mask of what named users and groups
    may do).  Its members can rename what is in it, so they are trusted
    like root; root alone makes system accounts and their groups, and
    requiring that no login account is a member keeps out, e.g., the first
    user Ubuntu puts in ``adm``.  A group nobody can name, a user group
    (gid above the bound) or one with a login account is refused.  The
    members are looked up through this machine's NSS, where the kernel
    gets them; a network directory that hands out system gids to people
    is not foreseen;
- every symlink met on the way is root-owned, and its target is checked by
  the same rules;
- inside a source tree, a symlink may point only inside the tree.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import os
import pwd
import stat
from collections import deque
from pathlib import Path

from nvkmd.errors import ErrorCode, NvkmdError

MAX_LINKS = 40      # the kernel's own limit (ELOOP)
SYS_ID_MAX = 999    # shadow's default SYS_GID_MAX and SYS_UID_MAX (login.defs(5))
ACL_ACCESS = "system.posix_acl_access"


class Untrusted(NvkmdError):
    """A path that a user other than root could have changed."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.SOURCE_UNSAFE):
        super().__init__(code, message)


@dataclasses.dataclass(frozen=True)
class SystemIds:
    """Where the system accounts' and groups' ids end (login.defs)."""
    gid_max: int = SYS_ID_MAX
    uid_max: int = SYS_ID_MAX

    @classmethod
    def read(cls, login_defs: Path) -> "SystemIds":
        """The bounds ``login_defs`` sets; a missing or unreadable file, or a
        value that is no number, leaves shadow's default."""
        values = {}
        try:
            text = login_defs.read_text(errors="replace")
        except OSError:
            return cls()
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("SYS_GID_MAX", "SYS_UID_MAX") \
                    and words[1].isdigit():
                values[words[0]] = int(words[1])
        return cls(values.get("SYS_GID_MAX", SYS_ID_MAX), values.get("SYS_UID_MAX", SYS_ID_MAX))


def _has_acl(path: Path) -> bool:
    try:
        os.getxattr(path, ACL_ACCESS, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        return True             # cannot tell: assume the worst
    return True


def _untrusted_group(gid: int, ids: SystemIds) -> str | None:
    """Why members of group ``gid`` may not change what nvkmd trusts, or None."""
    if gid > ids.gid_max:
        return f"not a system group (gid above {ids.gid_max})"
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return "a group this system cannot name"
    members = [(name, _uid_of(name)) for name in group.gr_mem]
    members += [(u.pw_name, u.pw_uid) for u in pwd.getpwall() if u.pw_gid == gid]
    for name, uid in members:
        if uid is None:
            return f"{group.gr_name}, whose member {name} is no known user"
        if uid > ids.uid_max:
            return f"{group.gr_name}, whose member {name} is a login account (uid {uid})"
    return None


def _uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _writable_by_others(st: os.stat_result) -> str | None:
    if st.st_mode & stat.S_IWOTH:
        return "writable by everyone"
    # Even for group root: with an ACL, the group bits are the mask of what
    # named users and groups may do.
    if st.st_mode & stat.S_IWGRP:
        return f"writable by group {st.st_gid}"
    return None


def _sticky_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and bool(st.st_mode & stat.S_ISVTX)


def _group_parent_problem(st: os.stat_result, path: Path, ids: SystemIds) -> str | None:
    """Why a root-owned, group- (not world-) writable parent directory is
    not trusted, or None: the system group exception (module docstring)."""
    if (why := _untrusted_group(st.st_gid, ids)):
        return f"writable by group {st.st_gid}, {why}"
    if _has_acl(path):
        return f"writable by group {st.st_gid} and has an ACL (the group bits are its mask)"
    return None


def problem(st: os.stat_result, *, parent: bool = False, path: Path | None = None,
            ids: SystemIds = SystemIds()) -> str | None:
    """Why an entry with this (l)stat is not trustworthy, or None.
    ``parent``: it is only traversed, so a root-owned sticky directory is
    fine, and so is one only a system group may write (``path`` names it,
    to look for an ACL; without it the exception does not apply)."""
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}"
    if stat.S_ISLNK(st.st_mode):
        return None            # a link's own mode means nothing; its owner does
    bad = _writable_by_others(st)
    if bad and parent and _sticky_dir(st):
        return None
    if bad and parent and path is not None and stat.S_ISDIR(st.st_mode) \
            and not st.st_mode & stat.S_IWOTH:
        return _group_parent_problem(st, path, ids)
    return bad


def resolve(path: Path, ids: SystemIds = SystemIds()) -> tuple[Path, list[str]]:
    """``path`` resolved the way the kernel does, with every step checked.

    Returns (the resolved path, the problems met: "<path> is <problem>").  A
    missing final part is fine (nvkmd creates it); its existing parents are
    checked.  Each directory is checked before anything in it is looked up.
    """
    problems: list[str] = []
    path = Path(os.path.abspath(path))
    todo = deque(path.parts[1:])
    cur = Path("/")
    st = os.lstat(cur)
    if (p := problem(st, parent=bool(todo), path=cur, ids=ids)):
        problems.append(f"/ is {p}")
    links = 0
    while todo:
        name = todo.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            cur = cur.parent          # already checked on the way down
            continue
        entry = cur / name
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            return Path(os.path.join(entry, *todo)), problems
        except NotADirectoryError:
            problems.append(f"{cur} is not a directory")
            return Path(os.path.join(entry, *todo)), problems
        last = not todo
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                problems.append(f"{path}: too many levels of symbolic links")
                return entry, problems
            if (p := problem(st)):
                problems.append(f"{entry} (a symlink) is {p}")
            target = os.readlink(entry)
            todo.extendleft(reversed(Path(target).parts[1:] if target.startswith("/")
                                     else Path(target).parts))
            if target.startswith("/"):
                cur = Path("/")
            continue
        if (p := problem(st, parent=not last, path=entry, ids=ids)):
            problems.append(f"{entry} is {p}")
        cur = entry
    return cur, problems


def check_path(path: Path, what: str, code: ErrorCode = ErrorCode.SOURCE_UNSAFE,
               ids: SystemIds = SystemIds()) -> Path:
    """The resolved ``path``, or Untrusted naming the first problem."""
    resolved, problems = resolve(path, ids)
    if problems:
        raise Untrusted(f"refusing {what} {path}: {problems[0]}; nvkmd runs as root and "
                        "trusts only what root alone can change", code)
    return resolved


def check_tree(tree: Path, what: str = "source") -> Path:
    """Refuse a source tree unless it and every file in it are root's alone.

    The tree is walked as the build sees it: every entry is checked, and a
    symlink must resolve inside the tree (its target is then checked as a
    part of the tree).  Returns the resolved tree."""
    top = check_path(tree, what)
    if not top.is_dir():
        raise Untrusted(f"refusing {what} {tree}: not a directory")

    def refuse(message: str) -> Untrusted:
        return Untrusted(f"refusing {what} {tree}: {message}; nvkmd runs its Makefiles as root")

    def walk_error(e: OSError) -> None:
        raise refuse(f"cannot read {e.filename}: {e.strerror}")

    # Path strings, not a Path per entry: wait-ready walks NVIDIA's tree on every boot.
    for dirpath, dirnames, filenames in os.walk(top, onerror=walk_error):
        for name in dirnames + filenames:
            entry = os.path.join(dirpath, name)
            st = os.lstat(entry)
            if (p := problem(st)):
                raise refuse(f"{entry} is {p}")
            if stat.S_ISLNK(st.st_mode):
                target = Path(os.path.realpath(entry))
                if not target.is_relative_to(top):
                    raise refuse(f"symlink {entry} points to {target}, outside the tree")
    return top


def check_dir(path: Path, what: str, ids: SystemIds = SystemIds()) -> Path:
    """A directory nvkmd writes and later trusts (state, cache, logs): it
    and its parents must be root's alone; it may not exist yet.  A problem
    is a configuration error (exit status 78)."""
    resolved = check_path(path, what, ErrorCode.CONFIG, ids)
    if resolved.exists() and not resolved.is_dir():
        raise Untrusted(f"refusing {what} {path}: not a directory", ErrorCode.CONFIG)
    return resolved


def check_dirs(paths) -> None:
    """The state, cache and log directories of ``paths`` (a Paths), or
    Untrusted with ErrorCode.CONFIG naming the first one that fails."""
    ids = SystemIds.read(paths.login_defs)
    for d, what in ((paths.state_dir, "state directory"), (paths.cache_dir, "cache directory"),
                    (paths.log_dir, "log directory")):
        check_dir(d, what, ids)
