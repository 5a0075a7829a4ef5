"""The man pages and nvkmctl's shell completions against the programs
themselves: every command and option the parsers accept (read from their
--help) is documented and completed; the completions run in real bash
(with bash-completion) and fish, and zsh parses its file."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from functools import lru_cache

import pytest

from helpers import REPO

MAN = REPO / "man"
COMPLETIONS = REPO / "completions"
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def help_of(module: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", module, *args, "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def options(help_text: str) -> set[str]:
    """The option strings of an argparse --help (its "options:" section)."""
    section = help_text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    found: set[str] = set()
    for line in section.splitlines():
        if line.startswith("  -"):
            found |= set(OPTION.findall(line.split("  ", 2)[1] if line.count("  ") > 1 else line))
    return found - {"-h", "--help"}


def subcommands(help_text: str, metavar: str) -> list[str]:
    section = help_text.split(f"\n  {metavar}\n", 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for m in re.finditer(r"^    (\S+)", section, re.M)]


@lru_cache
def nvkmctl_commands() -> dict[str, set[str]]:
    """command (or "source ACTION") -> its options."""
    top = help_of("nvkmd.cli")
    out = {"": options(top)}
    for cmd in subcommands(top, "COMMAND"):
        text = help_of("nvkmd.cli", cmd)
        out[cmd] = options(text)
        if cmd == "source":
            for action in subcommands(text, "ACTION"):
                out[f"source {action}"] = options(help_of("nvkmd.cli", cmd, action))
    return out


def man_text(name: str) -> str:
    text = (MAN / name).read_text().replace("\\-", "-").replace("\\(dq", '"')
    return re.sub(r"\\f[BIRP]", "", text)


def test_nvkmctl_man_page_has_every_command_and_option():
    text = man_text("nvkmctl.1")
    commands = nvkmctl_commands()
    assert len(commands) > 10
    for cmd, opts in commands.items():
        for word in cmd.split():
            assert re.search(rf"^\.(B|BR|BI|TP)\s.*\b{re.escape(word)}\b", text, re.M), word
        for opt in opts:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), (cmd, opt)


@pytest.mark.parametrize("module, page", [("nvkmd.daemon", "nvkmd.8"),
                                          ("nvkmd.agent", "nvkmd-agent.1")])
def test_program_man_pages_have_every_option(module, page):
    text = man_text(page)
    opts = options(help_of(module))
    assert "--version" in opts
    for opt in opts:
        assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), (page, opt)


def test_nvkmd_toml_man_page_has_every_key_of_the_documented_file():
    text = man_text("nvkmd.toml.5")
    documented = tomllib.loads((REPO / "etc/nvkmd.toml").read_text())
    for section, keys in documented.items():
        assert re.search(rf"^\.SH \[{section}\]$", text, re.M), section
        body = text.split(f".SH [{section}]", 1)[1].split("\n.SH ", 1)[0]
        for key, default in keys.items():
            assert re.search(rf"^\.BR (.*\W)?{key} ", body, re.M), (section, key)


def test_man_pages_render_without_groff_warnings():
    for page in sorted(MAN.iterdir()):
        r = subprocess.run(["man", "--warnings=all", "-E", "UTF-8", "-l", "-Tutf8", str(page)],
                           capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LANG": "C.UTF-8"})
        assert r.returncode == 0 and r.stderr == "", (page.name, r.stderr)
        assert len(r.stdout) > 500


@pytest.mark.parametrize("path", ["bash/nvkmctl", "zsh/_nvkmctl", "fish/nvkmctl.fish"])
def test_completion_files_name_every_command_and_option(path):
    text = (COMPLETIONS / path).read_text()
    for cmd, opts in nvkmctl_commands().items():
        for word in cmd.split():
            assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text), (path, word)
        for opt in opts:
            # fish and zsh spell "-k --kernel" as "-s k -l kernel" / "{-k,--kernel}".
            spelled = [opt, f"-l {opt[2:]}" if opt.startswith("--") else f"-s {opt[1:]}",
                       f"'{opt}'", f",{opt}", f"{{{opt},"]
            assert any(s in text for s in spelled), (path, cmd, opt)


def bash_complete(line: str) -> list[str]:
    script = (f"source /usr/share/bash-completion/bash_completion\n"
              f"source {COMPLETIONS / 'bash/nvkmctl'}\n"
              f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
              f"read -ra COMP_WORDS <<< \"$COMP_LINE\"\n"
              f"[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')\n"
              f"COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
              "_nvkmctl nvkmctl \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return sorted(filter(None, r.stdout.splitlines()))


def test_bash_completes_commands_options_and_kernels():
    assert bash_complete("nvkmctl bu") == ["build"]
    assert bash_complete("nvkmctl w") == ["wait-ready"]
    assert bash_complete("nvkmctl pref") == ["preflight"]
    assert bash_complete("nvkmctl preflight --t") == ["--timeout"]
    assert "--kernel" in bash_complete("nvkmctl build --")
    assert bash_complete("nvkmctl --bus s") == ["session", "system"]
    assert bash_complete("nvkmctl source ") == ["init", "status", "sync", "update"]
    assert bash_complete("nvkmctl source update --n") == ["--no-build"]
    kernels = sorted(p.name for p in __import__("pathlib").Path("/lib/modules").iterdir() if p.is_dir())
    assert kernels, "no /lib/modules/* here"
    assert bash_complete("nvkmctl logs -k ") == kernels


def test_fish_completes_commands_and_options():
    def complete(line: str) -> list[str]:
        r = subprocess.run(["fish", "--no-config", "-c",
                            f"source {COMPLETIONS / 'fish/nvkmctl.fish'}; complete -C {line!r}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return sorted(l.split("\t")[0] for l in r.stdout.splitlines())
    assert complete("nvkmctl bu") == ["build"]
    assert "--force" in complete("nvkmctl build --")
    assert "--no-build" in complete("nvkmctl source update --")


def test_zsh_parses_its_completion():
    r = subprocess.run(["zsh", "-n", str(COMPLETIONS / "zsh/_nvkmctl")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
