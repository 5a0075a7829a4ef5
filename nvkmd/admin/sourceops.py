"""``nvkmctl source status | init PATH | update | sync``: managing a git
checkout of NVIDIA's open-gpu-kernel-modules as nvkmd's driver source.

* ``init PATH`` checks that PATH is laid out like open-gpu-kernel-modules
  (``version.mk`` and ``kernel-open/``), reads the version, writes
  ``kernel-open/dkms.conf`` from NVIDIA's dkms.conf template (the tokens
  ``__VERSION_STRING``, ``__JOBS``, ``__EXCLUDE_MODULES``, ``__DKMS_MODULES``
  of NVIDIA's layout README; the module list comes from the tree, never
  from a list in nvkmd), links ``/usr/src/<name>-<version>`` to
  ``kernel-open/`` (inside ``--root``) and, when the backend is DKMS,
  registers the version with ``dkms add``.
* ``update`` checks out the newest version tag (after ``git fetch --tags``
  when the checkout has a remote), re-runs ``init`` for the new version
  and queues rebuilds for every kernel.
* ``sync`` queues rebuilds from the current checkout.
* ``status`` shows the path, kind, current and newest tag and version.

Queueing is a callback (``queue(kernel, force) -> job ids``): nvkmctl passes
the daemon's D-Bus ``Build`` call; tests and one-shot callers pass their own.
Git runs as the real ``git`` in a subprocess (``checkout``); dkms.conf is
rendered from NVIDIA's template (``dkmsconf``).

Why ``kernel-open/``: DKMS copies the whole registered directory and runs
``make`` at its top.  ``kernel-open/`` is what NVIDIA's ``.run`` registers
(its dkms.conf lives there), and the clone's top also holds the full
``src/`` tree, which DKMS has no business copying for every kernel.  When
git tracks ``kernel-open/dkms.conf`` (NVIDIA's template), the generated file
replaces it in the working tree; ``update`` restores it before checking out
another tag and regenerates it afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

from nvkmd.admin.checkout import (
    Checkout,
    binary_targets,
    checkout_at,
    checkout_of,
    current_checkout,
    current_tag,
    git,
    is_git,
    newest_tag,
    prepare_binaries,
    remote_url,
    tags,
    tracked,
)
from nvkmd.admin.dkmsconf import DKMS_CONF, GENERATED_MARK, conf_value, render_dkms_conf, template_for
from nvkmd.config import Config
from nvkmd.errors import ErrorCode, NvkmdError, source_invalid
from nvkmd.paths import Paths
from nvkmd.system import dkms
from nvkmd.system.source import check_ownership, discover, modules_of

QueueFn = Callable[[str, bool], list[int]]   # (kernel "" = all, force) -> job ids


# -- status ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SourceStatus:
    path: str
    kind: str
    remote: str = ""
    current_tag: str = ""
    latest_tag: str = ""
    version: str = ""
    link: str = ""
    dkms: str = ""            # "name/version" when registered with DKMS, else ""
    error: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        if not self.path:
            return [f"Source:          none ({self.error})"]
        kind = f"{self.kind} ({self.remote})" if self.remote else self.kind
        out = [f"Source Path:     {self.path}", f"Source Type:     {kind}"]
        if self.kind == "git":
            newer = self.latest_tag and self.current_tag != self.latest_tag
            out += [f"Current Tag:     {self.current_tag or '(none: HEAD is not a tagged release)'}",
                    f"Latest Tag:      {self.latest_tag or '(no version tags)'}"
                    + ("   (newer: `nvkmctl source update`)" if newer else "")]
        out += [f"Driver Version:  {self.version}"]
        if self.link:
            out += [f"Linked As:       {self.link}"]
        out += [f"DKMS Registered: {'yes (' + self.dkms + ')' if self.dkms else 'no'}"]
        if self.error:
            out += [f"Problem:         {self.error}"]
        return out


def status(paths: Paths, config: Config) -> SourceStatus:
    """Read-only: a Debian tarball not unpacked yet is named, not unpacked."""
    try:
        src = discover(paths, config, unpack=False)
    except NvkmdError as e:
        from nvkmd.system.source import candidates
        found = candidates(paths) if config.source_path == "auto" else []
        if found:
            return SourceStatus(str(found[-1][1]), found[-1][0], error=e.message)
        return SourceStatus("", "", error=e.message)
    co = checkout_of(src)
    try:
        reg = dkms.registration_for(paths, src)
    except NvkmdError as e:
        reg = None
        src_error = e.message
    else:
        src_error = ""
    regs = reg.spec if reg else ""
    if co is None:
        return SourceStatus(str(src.origin), src.kind, version=src.version, dkms=regs,
                            error=src_error)
    link = _link_for(paths, co)
    if not is_git(co.top):
        return SourceStatus(str(co.top), "path", version=co.version, link=link, dkms=regs,
                            error=src_error)
    return SourceStatus(str(co.top), "git", remote_url(co.top), current_tag(co.top),
                        newest_tag(tags(co.top)), co.version, link, regs, src_error)


def _link_for(paths: Paths, co: Checkout) -> str:
    try:
        for d in paths.src_dir.iterdir():
            if d.is_symlink() and d.resolve() == co.tree.resolve():
                return str(d)
    except OSError:
        pass
    return ""


# -- init --------------------------------------------------------------------

@dataclasses.dataclass
class InitResult:
    version: str
    tree: Path
    link: Path
    conf: str                  # "written" | "kept"
    registered: str = ""       # "name/version" once registered with DKMS
    notes: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"Driver Version:  {self.version}",
               f"dkms.conf:       {self.tree / DKMS_CONF} ({self.conf})",
               f"Linked:          {self.link} -> {self.tree}",
               f"DKMS Registered: {'yes (' + self.registered + ')' if self.registered else 'no'}"]
        return out + [f"note: {n}" for n in self.notes]


def init(paths: Paths, config: Config, path: Path, *, register: bool | None = None,
         exclude: Sequence[str] = (), log: Callable[[str], None] = lambda line: None) -> InitResult:
    """Set up ``path`` as a source; ``register`` defaults to ``build.backend == "dkms"``.
    ``log`` gets the output of the one-time build of the OS-agnostic objects."""
    co = checkout_at(path.resolve())
    check_ownership(co.tree)
    notes: list[str] = []
    jobs = config.build_jobs or os.cpu_count() or 1
    made = prepare_binaries(co, jobs, log)
    if made:
        notes.append(f"built the OS-agnostic objects: {', '.join(made)}")
    if not is_git(co.top):
        notes.append(f"{co.top} is not a git checkout: `source update` will not work for it")
    modules = modules_of(co.tree, co.top)
    unknown = [m for m in exclude if m not in modules]
    if unknown:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"cannot exclude {', '.join(unknown)}: "
                         f"the tree builds {', '.join(modules)}")
    template, what = template_for(co)
    conf = co.tree / DKMS_CONF
    if template:
        text = render_dkms_conf(template, version=co.version, jobs=jobs, modules=modules,
                                exclude=exclude)
        tmp = conf.with_name(f".{DKMS_CONF}.nvkmd-tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, conf)
        conf_state = f"written from {what}"
    else:
        text = conf.read_text()
        conf_state = "kept: hand-written, not a template"
    name = conf_value(text, "PACKAGE_NAME") or "nvidia"
    link = _make_link(paths, co, name)
    result = InitResult(co.version, co.tree, link, conf_state, notes=notes)
    if register is None:
        register = config.build_backend == "dkms"
    if register:
        result.registered = _register(paths, name, co.version)
    elif config.build_backend != "kbuild":
        notes.append("not registered with DKMS; nvkmd builds it with Kbuild "
                     "(`source init --dkms` registers it)")
    try:
        used = discover(paths, config, unpack=False)
        if used.tree.resolve() != co.tree.resolve():
            notes.append(f"nvkmd builds {used.origin} (version {used.version}), not this source; "
                         f"set source.path = \"{paths.system_path(co.top)}\" in nvkmd.toml")
    except NvkmdError as e:
        notes.append(f"source discovery: {e.message}")
    return result


def _make_link(paths: Paths, co: Checkout, name: str) -> Path:
    """``<src_dir>/<name>-<version>`` -> the checkout's kernel-open/."""
    link = paths.src_dir / f"{name}-{co.version}"
    target = co.tree.resolve()
    if link.is_symlink():
        if link.resolve() == target:
            return link
        old = Path(os.readlink(link))
        if link.exists() and not _inside(old if old.is_absolute() else link.parent / old, co.top):
            raise source_invalid(f"{link} already links to {old}; remove it first")
        link.unlink()
    elif link.exists():
        raise source_invalid(f"{link} exists and is not a link (a packaged source?); not replacing it")
    paths.src_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


def _inside(p: Path, top: Path) -> bool:
    try:
        p.resolve().relative_to(top.resolve())
        return True
    except ValueError:
        return False


def _register(paths: Paths, name: str, version: str) -> str:
    if paths.root != Path("/"):
        raise NvkmdError(ErrorCode.NOT_SUPPORTED, f"cannot register with DKMS inside the root "
                         f"{paths.root}: dkms works on the real system only")
    if not dkms.available():
        raise NvkmdError(ErrorCode.NOT_SUPPORTED, "cannot register with DKMS: dkms is not installed")
    if not dkms.status(paths, name, version):
        proc = dkms.add(paths, name, version)
        if proc.returncode != 0:
            detail = proc.stdout.strip().splitlines()
            raise source_invalid(f"dkms add -m {name} -v {version} exited {proc.returncode}"
                                f"{': ' + detail[-1] if detail else ''}")
    return f"{name}/{version}"


# -- update and sync ---------------------------------------------------------

@dataclasses.dataclass
class UpdateResult:
    path: Path
    before: str                # tag (or version) before
    after: str                 # tag after
    changed: bool
    init: InitResult | None = None
    jobs: list[int] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        if self.changed:
            out = [f"Updated {self.path}: {self.before or '(untagged)'} -> {self.after}"]
        else:
            out = [f"{self.path} is at the newest tag, {self.after}"]
        if self.init:
            out += self.init.lines()
        if self.jobs:
            out.append(f"Queued {len(self.jobs)} build(s): " + ", ".join(map(str, self.jobs)))
        return out + [f"note: {n}" for n in self.notes]


def update(paths: Paths, config: Config, *, no_build: bool = False,
           queue: QueueFn | None = None, log: Callable[[str], None] = lambda line: None
           ) -> UpdateResult:
    src, co = current_checkout(paths, config)
    if not is_git(co.top):
        raise source_invalid(f"{co.top} is not a git checkout; cannot update it")
    notes: list[str] = []
    if remote_url(co.top):
        try:
            git(co.top, "fetch", "--tags", "--quiet", "origin")
        except NvkmdError as e:
            notes.append(f"fetching failed, using the tags already here: {e.message}")
    before = current_tag(co.top)
    latest = newest_tag(tags(co.top))
    if not latest:
        raise source_invalid(f"{co.top} has no version tags (like 590.48.01)")
    reg = dkms.registration_for(paths, src)
    result = UpdateResult(co.top, before, latest, before != latest, notes=notes)
    if result.changed:
        old_link = _link_for(paths, co)
        if reg and old_link:
            _retire(Path(old_link), co)
            notes.append(f"{old_link} is now a frozen copy of {co.version} for DKMS, which keeps "
                         "it installed until the new version is; nvkmd drops both afterwards")
        _restore_template(co)
        git(co.top, "checkout", "--quiet", latest)
        new = checkout_at(co.top)
        result.init = init(paths, config, co.top, register=bool(reg) or None, log=log)
        if old_link and not reg and Path(old_link) != result.init.link \
                and new.version != co.version:
            Path(old_link).unlink()
            notes.append(f"removed {old_link} (it was {co.version})")
    if result.changed and not no_build and queue is not None:
        result.jobs = queue("", False)
    elif not result.changed and not no_build and queue is not None:
        notes.append("nothing to rebuild; `nvkmctl source sync` rebuilds anyway")
    return result


def _retire(link: Path, co: Checkout) -> None:
    """Replace ``/usr/src/<name>-<old>`` (a link into the checkout) by a copy
    of the old tree, generated dkms.conf included.

    DKMS reads every registered version's dkms.conf for ``dkms status``; a
    link that vanished or now shows the new version would break DKMS for
    all modules, while unregistering the old version now would uninstall
    it from every kernel before the new one is built.
    """
    tmp = link.with_name(f".{link.name}.nvkmd-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(co.tree, tmp, symlinks=False)
    (tmp / dkms.RETIRED_MARK).write_text(f"frozen copy of {co.tree} at {co.version}, made by "
                                        "`nvkmctl source update`\n")
    link.unlink()
    tmp.rename(link)


def _restore_template(co: Checkout) -> None:
    """Undo our generated dkms.conf so the checkout can move to another tag,
    and drop the OS-agnostic objects made for this version (untracked files a
    checkout would leave behind, stale for the next version)."""
    for t in binary_targets(co.top):
        (co.top / t).unlink(missing_ok=True)
    conf = co.tree / DKMS_CONF
    rel = str(conf.relative_to(co.top))
    if tracked(co.top, rel):
        git(co.top, "checkout", "--quiet", "HEAD", "--", rel)
    elif conf.is_file() and conf.read_text().startswith(GENERATED_MARK):
        conf.unlink()


@dataclasses.dataclass
class SyncResult:
    version: str
    jobs: list[int]

    def lines(self) -> list[str]:
        return [f"Queued {len(self.jobs)} build(s) of {self.version}: "
                + (", ".join(map(str, self.jobs)) or "none")]


def sync(paths: Paths, config: Config, queue: QueueFn, kernel: str = "",
         force: bool = False) -> SyncResult:
    src = discover(paths, config)
    return SyncResult(src.version, queue(kernel, force))
