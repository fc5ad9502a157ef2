"""The `lx` command line, driven through main([...])."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

from lxsub.cli.main import main, split_command
from lxsub.errors import EXIT_CANTCREAT, EXIT_DATAERR, EXIT_UNAVAILABLE, EXIT_USAGE
from lxsub.state import Registry


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "lxhome"
    monkeypatch.setenv("LX_HOME", str(home))
    return home


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    path = tmp_path / "root.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), ("bin/sh", b"\x7fELF")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def imported(capsys, tmp_path: Path, tarball: Path, *names: str) -> None:
    for name in names:
        assert run(capsys, "--import", name, str(tmp_path / name), str(tarball)) == (0, "", "")


# -- managing distros --


def test_list_empty(home: Path, capsys) -> None:
    code, out, err = run(capsys, "--list")
    assert code == 0 and "lx --import" in out and err == ""


def test_import_and_list(home: Path, tmp_path: Path, tarball: Path, capsys) -> None:
    imported(capsys, tmp_path, tarball, "debian", "busybox")
    assert (tmp_path / "debian" / "rootfs" / "bin" / "sh").read_bytes() == b"\x7fELF"
    code, out, _ = run(capsys, "--list")
    assert code == 0
    assert out.splitlines() == ["Linux distributions:", "debian (Default)", "busybox"]
    assert run(capsys, "-l")[1] == out


def test_list_verbose(home: Path, tmp_path: Path, tarball: Path, capsys) -> None:
    imported(capsys, tmp_path, tarball, "debian", "bb")
    code, out, _ = run(capsys, "--list", "-v")
    rows = [line.split() for line in out.splitlines()]
    assert code == 0
    assert rows == [["NAME", "STATE", "VERSION"], ["*", "debian", "Stopped", "1"], ["bb", "Stopped", "1"]]
    assert out.splitlines()[2].startswith("  bb")


def test_set_default(home: Path, tmp_path: Path, tarball: Path, capsys) -> None:
    imported(capsys, tmp_path, tarball, "a", "b")
    assert run(capsys, "--set-default", "b") == (0, "", "")
    assert "b (Default)" in run(capsys, "--list")[1]
    assert run(capsys, "-s", "a")[0] == 0
    assert Registry(home).default().name == "a"


def test_set_default_unknown(home: Path, capsys) -> None:
    code, out, err = run(capsys, "--set-default", "ghost")
    assert code == EXIT_UNAVAILABLE
    assert err == "lx: no distro named 'ghost' (see 'lx --list'; import one with 'lx --import NAME DIR TARBALL')\n"


def test_unregister_removes_entry_and_files(home: Path, tmp_path: Path, tarball: Path, capsys) -> None:
    imported(capsys, tmp_path, tarball, "a", "b")
    assert run(capsys, "--unregister", "a") == (0, "", "")
    assert not (tmp_path / "a").exists()
    assert [d.name for d in Registry(home).list()] == ["b"]
    assert Registry(home).default().name == "b"
    assert (tmp_path / "b" / "rootfs" / "etc" / "passwd").exists()


def test_unregister_unknown(home: Path, capsys) -> None:
    code, _, err = run(capsys, "--unregister", "ghost")
    assert code == EXIT_UNAVAILABLE and err.startswith("lx: no distro named 'ghost'")


def test_import_errors_are_one_line(home: Path, tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"garbage" * 100)
    code, out, err = run(capsys, "--import", "x", str(tmp_path / "x"), str(junk))
    assert code == EXIT_DATAERR
    assert err.startswith("lx: ") and err.count("\n") == 1 and str(junk) in err
    assert not (tmp_path / "x").exists()
    assert Registry(home).list() == []


def test_import_duplicate(home: Path, tmp_path: Path, tarball: Path, capsys) -> None:
    imported(capsys, tmp_path, tarball, "a")
    code, _, err = run(capsys, "--import", "a", str(tmp_path / "other"), str(tarball))
    assert code == EXIT_CANTCREAT and "'a' already exists" in err


def test_import_from_stdin(home: Path, tmp_path: Path, tarball: Path, capsys,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tarball, "rb") as f:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(f))
        assert run(capsys, "--import", "s", str(tmp_path / "s"), "-")[0] == 0
    assert (tmp_path / "s" / "rootfs" / "etc" / "passwd").exists()


def test_export_then_import(home: Path, tmp_path: Path, tarball: Path, capsys) -> None:
    imported(capsys, tmp_path, tarball, "a")
    out = tmp_path / "a.tar.xz"
    assert run(capsys, "--export", "a", str(out)) == (0, "", "")
    with tarfile.open(out, "r:xz") as tar:
        assert "./bin/sh" in tar.getnames()
    assert run(capsys, "--import", "b", str(tmp_path / "b"), str(out))[0] == 0
    assert (tmp_path / "b" / "rootfs" / "bin" / "sh").read_bytes() == b"\x7fELF"


def test_export_unknown(home: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "--export", "ghost", str(tmp_path / "g.tar"))
    assert code == EXIT_UNAVAILABLE and not (tmp_path / "g.tar").exists()


def test_version_and_help(home: Path, capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("lx (lxsub) ")
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "--import NAME DIR TARBALL" in out and "-e CMD" in out


# -- usage errors --


@pytest.mark.parametrize("argv, hint", [
    (["--bogus"], "unknown option '--bogus'"),
    (["--import", "only-name"], "expected 3 arguments"),
    (["--export"], "expected 2 arguments"),
    (["--export", "x", "x.zip"], "unknown archive type"),
    (["--list", "extra"], "--list does not take a command"),
    (["--list", "--unregister", "x"], "not allowed with"),
    (["--list", "--", "ls"], "--list does not take a command"),
    (["-d", "x", "--list"], "-d cannot be combined with --list"),
    (["-v"], "-v only goes with --list"),
    (["-e"], "-e needs a command"),
    (["-d"], "expected one argument"),
    (["--import", "bad/name", "dir", "t.tar"], "invalid distro name"),
])
def test_usage_errors(home: Path, capsys, argv: list[str], hint: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == EXIT_USAGE
    assert out == ""
    assert err.startswith("lx: ") and err.count("\n") == 1
    assert hint in err


# -- splitting off the Linux command --


@pytest.mark.parametrize("argv, ours, mode, command", [
    ([], [], None, None),
    (["-e", "ls", "-l"], [], "exec", ["ls", "-l"]),
    (["-d", "deb", "-u", "bob", "-e", "ls", "-e"], ["-d", "deb", "-u", "bob"], "exec", ["ls", "-e"]),
    (["--", "echo", "$HOME", "--list"], [], "shell", ["echo $HOME --list"]),
    (["--cd", "/tmp", "--"], ["--cd", "/tmp"], "login", []),
    (["-u", "-e", "--", "ls"], ["-u", "-e"], "shell", ["ls"]),  # -e here is the user's name
    (["--exec", "/bin/true"], [], "exec", ["/bin/true"]),
    # The first word no option takes starts the command, as with wsl.
    (["ls", "-la"], [], "shell", ["ls -la"]),
    (["-d", "deb", "--cd", "~", "ls", "-l", "--", "x"], ["-d", "deb", "--cd", "~"], "shell",
     ["ls -l -- x"]),
    (["--install", "debian", "--user", "bob"], ["--install", "debian", "--user", "bob"], None, None),
    (["--install", "--name", "x"], ["--install", "--name", "x"], None, None),
    (["--import", "n", "d", "t.tar", "-v"], ["--import", "n", "d", "t.tar", "-v"], None, None),
    (["--export", "n", "-"], ["--export", "n", "-"], None, None),
    (["--mount", "n", "/mnt", "-u", "bob"], ["--mount", "n", "/mnt", "-u", "bob"], None, None),
    (["-s", "n"], ["-s", "n"], None, None),
    (["--unregister", "n"], ["--unregister", "n"], None, None),
    (["--path", "-u", "/tmp"], ["--path", "-u", "/tmp"], None, None),
    (["--list", "extra"], ["--list"], "shell", ["extra"]),
])
def test_split_command(argv, ours, mode, command) -> None:
    got_ours, got = split_command(argv)
    assert got_ours == ours
    if mode is None:
        assert got is None
    else:
        assert (got.mode, got.argv) == (mode, command)


# -- running: the real manager (started on demand in the test's LX_HOME) --


@pytest.fixture
def manager(home: Path):
    yield
    main(["--shutdown"])


def test_run_unknown_distro(home: Path, capsys, manager) -> None:
    code, _, err = run(capsys, "-d", "ghost", "--", "true")
    assert code == EXIT_UNAVAILABLE and "no distro named 'ghost'" in err


def test_run_without_any_distro(home: Path, capsys, manager) -> None:
    code, _, err = run(capsys)
    assert code == EXIT_UNAVAILABLE and "lx --import" in err




# -- man page, help, first password (issue 12)

MAN_PAGE = Path(__file__).resolve().parents[2] / "share" / "man" / "man1" / "lx.1"


def test_man_page_names_every_option_of_the_help(capsys) -> None:
    """share/man/man1/lx.1 documents every option `lx --help` lists, and man
    renders it without a warning."""
    import re
    import shutil
    import subprocess

    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    options = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", help_text))
    page = MAN_PAGE.read_text().replace("\\-", "-")
    missing = sorted(o for o in options if o not in page)
    assert missing == [], missing
    if not shutil.which("man"):
        pytest.skip("man is not installed on the host")
    cp = subprocess.run(["man", "--warnings=all", "-l", str(MAN_PAGE)], capture_output=True,
                        env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin",
                             "MANPAGER": "cat", "PAGER": "cat"})
    assert cp.returncode == 0 and cp.stderr == b"", cp.stderr.decode()
    assert b"run Linux programs from a distro" in cp.stdout


def test_install_without_a_terminal_says_how_to_set_the_password(home: Path, capsys) -> None:
    from lxsub.cli import main as cli_main

    registry = Registry(home)
    assert cli_main._first_password(registry, "deb", "bob") == 0
    err = capsys.readouterr().err
    assert err == ("lx: bob has no password yet (sudo asks for it); set one with: "
                   "lx -d deb -u root passwd bob\n")
