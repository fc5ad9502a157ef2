"""wsl.exe's habits in `lx` (issue 12, items 5-8, 10, 13), through the real
command as root and as the unprivileged host user: --cd ~, a command
without `--`, the starting directory, unregistering a running distro,
export formats, shell completion."""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import time

import pytest

from tests.fixtures.runner import REPO_ROOT, wait_for
from tests.integration.distros import describe

COMPLETION = REPO_ROOT / "share" / "bash-completion" / "lx"
ZSH_FUNCTIONS = REPO_ROOT / "share" / "zsh" / "site-functions"


def lines(cp) -> list[str]:
    return cp.stdout.decode(errors="replace").splitlines()


def test_cd_tilde_is_the_linux_users_home(busybox):
    """`wsl --cd ~`: quoted, or as the host shell expands it (the host $HOME)."""
    host_home = busybox.runner.env()["HOME"]
    for user, home in (("root", "/root"), ("user", "/home/user")):
        for cd in ("~", host_home):
            cp = busybox.lx(["-u", user, "--cd", cd, "--", "pwd"])
            assert cp.returncode == 0 and lines(cp) == [home], describe(cp)
    cp = busybox.lx(["-u", "root", "--cd", "~/", "--", "pwd"])
    assert lines(cp) == ["/root"], describe(cp)
    cp = busybox.lx(["--cd", "~/no-such-dir", "--", "pwd"])
    assert cp.returncode == 127 and b"--cd ~/no-such-dir" in cp.stderr, describe(cp)


def test_first_word_starts_the_command(busybox):
    """`lx ls -la` as `wsl ls -la`: through the user's shell, options after
    the first word are the command's."""
    cp = busybox.runner.run(["-d", busybox.name, "-u", "root", "echo", "a", "-e", "--list", "$HOME"])
    assert cp.returncode == 0 and lines(cp) == ["a -e --list /root"], describe(cp)
    cp = busybox.runner.run(["-d", busybox.name, "ls", "-ld", "/etc"])
    assert cp.returncode == 0 and lines(cp)[0].startswith("d"), describe(cp)
    cp = busybox.runner.run(["-d", busybox.name, "exit", "7"])   # as lx -- exit 7
    assert cp.returncode == 7, describe(cp)


def test_starts_in_the_callers_directory_on_a_host_mount(busybox, tmp_path):
    """WSL starts in /mnt/c/... when called from C:\\...; here the host
    directory as the distro's DrvFs mount shows it, else the home."""
    runner = busybox.runner
    here = runner.root / "work dir"
    here.mkdir(exist_ok=True)
    runner.user.give(here)
    cp = runner.run(["--path", "-d", busybox.name, "-u", str(here)], check=True)
    linux = lines(cp)[0]
    assert linux.endswith("/work dir") and linux != str(here), describe(cp)
    cp = runner.run(["-d", busybox.name, "-u", "root", "--", "pwd"], cwd=here)
    assert cp.returncode == 0 and lines(cp) == [linux], describe(cp)
    # Host /proc is not shown by the host mount: the home.
    cp = runner.run(["-d", busybox.name, "-u", "root", "--", "pwd"], cwd="/proc")
    assert cp.returncode == 0 and lines(cp) == ["/root"], describe(cp)
    # --cd wins.
    cp = runner.run(["-d", busybox.name, "-u", "root", "--cd", "/etc", "--", "pwd"], cwd=here)
    assert lines(cp) == ["/etc"], describe(cp)


def test_unregister_terminates_a_running_distro(lx, busybox_tar):
    lx.import_distro("goner", busybox_tar)
    sleeper = lx.popen(["-d", "goner", "--", "sleep 60"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    try:
        wait_for(lambda: "Running" in lx.run(["--list", "-v"]).stdout.decode(), 30,
                 "the distro to run")
        started = time.monotonic()
        cp = lx.run(["--unregister", "goner"], timeout=60)
        assert cp.returncode == 0 and cp.stderr == b"", describe(cp)
        sleeper.wait(timeout=30)        # its instance ended with it
        assert time.monotonic() - started < 30
        assert "goner" not in lx.run(["--list"]).stdout.decode()
        assert not (lx.distros / "goner").exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.communicate()


@pytest.mark.parametrize("suffix, opener", [
    (".tar", "r:"), (".tar.gz", "r:gz"), (".tgz", "r:gz"), (".tar.xz", "r:xz"),
    (".tar.bz2", "r:bz2"), (".tar.zst", None),
])
def test_export_format_follows_the_suffix(busybox, suffix, opener):
    runner = busybox.runner
    out = runner.root / f"exp{suffix}"
    cp = runner.run(["--export", busybox.name, str(out)], timeout=300)
    if suffix == ".tar.zst" and not shutil.which("zstd"):
        assert cp.returncode == 69 and b"needs the zstd program" in cp.stderr, describe(cp)
        assert not out.exists()
        return
    assert cp.returncode == 0, describe(cp)
    if opener is None:
        data = subprocess.run(["zstd", "-dc", str(out)], capture_output=True, check=True).stdout
        assert data[257:262] == b"ustar", "not a tar inside the zstd frame"
        return
    with tarfile.open(out, opener) as tar:
        assert "./bin/busybox" in tar.getnames()


def test_export_refuses_a_name_that_is_no_tar_archive(busybox):
    runner = busybox.runner
    where = runner.root / "refused"
    where.mkdir(exist_ok=True)
    runner.user.give(where)
    for name in ("x.zip", "x", "x.gz"):
        cp = runner.run(["--export", busybox.name, str(where / name)])
        assert cp.returncode == 64, describe(cp)
        err = cp.stderr.decode()
        assert err.count("\n") == 1 and "unknown archive type" in err and ".tar.gz" in err, err
        assert list(where.iterdir()) == [], "nothing written"


def test_export_progress_ends_with_a_final_line(busybox):
    """On a terminal: the bar ends full and a last line says what was written."""
    import pexpect

    runner = busybox.runner
    out = runner.root / "bar.tar.gz"
    argv = runner.command(["--export", busybox.name, str(out)])
    child = pexpect.spawn(argv[0], argv[1:], env=runner.env(), cwd=str(runner.root),
                          timeout=300, dimensions=(24, 100))
    child.expect(pexpect.EOF)
    child.close()
    text = child.before.decode(errors="replace")
    assert child.exitstatus == 0, text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    last = plain.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith(f"Exported {busybox.name} to {out} (") and last.endswith(" MiB)."), text
    assert out.exists()


# -- bash completion (share/bash-completion/lx) with the real bash and lx

def _lx_on_path(runner) -> dict[str, str]:
    """The environment in which `lx` (as the completions call it) is this runner's."""
    bindir = runner.root / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "lx"
    wrapper.write_text(f'#!/bin/sh\nexec "{runner.python}" -m lxsub "$@"\n')
    wrapper.chmod(0o755)
    runner.user.give(bindir)
    runner.user.give(wrapper)
    return {"PATH": f"{bindir}:{runner.env()['PATH']}"}


def _complete(runner, *words: str) -> list[str]:
    """COMPREPLY for the command line `words` (the last is the one completed)."""
    env = _lx_on_path(runner)
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script = (f"source {COMPLETION}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
              "_lx; printf '%s\\n' \"${COMPREPLY[@]}\"")
    cp = runner.run_host(runner.user.wrap(["bash", "-c", script]), env=env, timeout=60)
    assert cp.returncode == 0, describe(cp)
    return sorted(filter(None, lines(cp)))


def test_bash_completion_of_distros_users_and_options(busybox):
    runner = busybox.runner
    assert busybox.name in _complete(runner, "lx", "-d", "")
    assert _complete(runner, "lx", "--unregister", busybox.name[:1]) == \
        sorted(n for n in lines(runner.run(["--complete", "distros"])) if n.startswith(busybox.name[:1]))
    assert _complete(runner, "lx", "-d", busybox.name, "-u", "") == ["root", "user"]
    assert _complete(runner, "lx", "--ins") == ["--install"]
    assert _complete(runner, "lx", "--install", "") == ["busybox", "debian"]
    assert _complete(runner, "lx", "--cd", "") == ["~"]
    # After the command starts, the words are the command's: nothing of lx's.
    assert "--install" not in _complete(runner, "lx", "-e", "ls", "--ins")


# -- zsh completion (share/zsh/site-functions/_lx) with the real zsh and lx.
# Completion widgets only run inside zle, so an interactive `zsh -f -i` on a
# pty gets the line and a Tab bound to a widget that runs the completion
# system (_main_complete) and records every word offered (compadd calls that
# add matches; -O/-A/-D only compute) into a file, then an end marker.

_ZSH_CAPTURE = r"""
fpath=($LX_ZSH_FPATH $fpath)
autoload -Uz compinit && compinit -u -D
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-[OAD]\ * ]]; then builtin compadd "$@"; return; fi
    local -a offered
    builtin compadd -O offered "$@"
    (( $#offered )) && print -rl -- $offered >> $LX_ZSH_CAPTURE
    builtin compadd "$@"
}
_lx_test_complete() { _main_complete; print -r -- '--end--' >> $LX_ZSH_CAPTURE }
zle -C lx-test-complete complete-word _lx_test_complete
bindkey '^I' lx-test-complete
"""


def _zsh_complete(runner, line: str) -> list[str]:
    """The words zsh offers when Tab is pressed at the end of `line`."""
    import pexpect
    setup, capture = runner.root / "capture.zsh", runner.root / "zsh-offered"
    setup.write_text(_ZSH_CAPTURE)
    capture.write_text("")
    runner.user.give(setup)
    runner.user.give(capture)
    env = runner.env({**_lx_on_path(runner), "LX_ZSH_FPATH": str(ZSH_FUNCTIONS),
                      "LX_ZSH_CAPTURE": str(capture)})
    argv = runner.user.wrap(["zsh", "-f", "-i"])
    child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(runner.root), timeout=60)
    try:
        child.sendline(f"source {setup}")
        child.send(line + "\t")
        deadline = time.monotonic() + 60
        while "--end--" not in capture.read_text():
            assert time.monotonic() < deadline, f"no completion for {line!r}: {child.before!r}"
            try:
                child.expect(pexpect.EOF, timeout=0.1)
                raise AssertionError(f"zsh ended: {child.before!r}")
            except pexpect.TIMEOUT:
                pass
    finally:
        child.close(force=True)
    return sorted({w for w in capture.read_text().splitlines() if w != "--end--"})


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (apt-get install zsh)")
def test_zsh_completion_of_distros_users_and_options(busybox):
    runner = busybox.runner
    distros = lines(runner.run(["--complete", "distros"]))
    assert busybox.name in distros
    assert _zsh_complete(runner, "lx -d ") == sorted(distros)
    assert _zsh_complete(runner, f"lx --unregister {busybox.name[:1]}") == \
        sorted(n for n in distros if n.startswith(busybox.name[:1]))
    assert _zsh_complete(runner, "lx --terminate ") == sorted(distros)
    assert _zsh_complete(runner, f"lx -d {busybox.name} -u ") == ["root", "user"]
    assert _zsh_complete(runner, f"lx --distribution={busybox.name} --user ") == ["root", "user"]
    assert _zsh_complete(runner, "lx -d no-such-distro -u ") == []  # -d's distro, not the default
    assert _zsh_complete(runner, "lx --ins") == ["--install"]
    assert _zsh_complete(runner, "lx --install ") == ["busybox", "debian"]
    assert _zsh_complete(runner, "lx --cd ") == ["~"]
    # Every option `lx --help` lists (its argparse part, and -e/--exec and
    # --path, which lx parses before argparse).
    help_text = runner.run(["--help"], check=True).stdout.decode()
    options = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", help_text.split("\noptions:\n", 1)[1]))
    options |= {"-e", "--exec", "--path"}
    assert len(options) > 25 and options - set(_zsh_complete(runner, "lx -")) == set()
    # After the command starts, the words are the command's: nothing of lx's.
    for line in ("lx -e ls --ins", "lx -- ls --ins", "lx ls --ins", "lx -- --ins"):
        assert "--install" not in _zsh_complete(runner, line), line
    assert "ls" in _zsh_complete(runner, "lx -e l")
