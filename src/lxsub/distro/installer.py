"""`lx --install`: distros made from Debian's packages, as the host user.

    busybox  /bin/busybox from Debian's busybox-static, a symlink per applet,
             a minimal /etc; seconds.
    debian   Debian bookworm, the Priority: required set plus apt (what
             debootstrap --variant=minbase installs); minutes.

Packages come through the host's apt tools, run unprivileged with a private
state directory under $XDG_CACHE_HOME/lx/apt (so nothing on the host changes
and downloaded .debs are reused by the next install; CI can cache that
directory). `dpkg-deb` unpacks them.

Debian is made in two stages, like debootstrap --foreign:

1. On the host: every package's files are extracted into a VolFs tree
   (owners, modes and devices from the archive go into the metadata
   attribute, nothing is chowned on the host), with /bin, /sbin and /lib*
   as symlinks into /usr (merged /usr, as bookworm has it), an empty dpkg
   database, and the .debs in /var/cache/apt/archives.
2. Inside lxsub, as root (`run_inside`): dpkg installs the same packages
   properly, running their maintainer scripts (useradd, chown, mknod,
   update-alternatives...), so the result is dpkg's own view, recorded in
   VolFs metadata. The log is /var/log/lx-install.log in the distro.

Both stages build in a temporary directory next to the target while the
distro is registered as Installing (Registry.creating): an install that
fails or is interrupted leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from lxsub.distro.importer import ROOTFS_DIR, RootfsWriter, choose_meta_db
from lxsub.distro.progress import Progress, start_quiet_thread
from lxsub.errors import EXIT_SOFTWARE, EXIT_UNAVAILABLE, EXIT_USAGE, LxError
from lxsub.kernel.doors import DOOR_GROUP
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.state import Distro, Registry, atomic_write, check_name, lx_home

KINDS = ("busybox", "debian")
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# debootstrap --variant=minbase: the required packages, and apt.
DEBIAN_EXTRA = ("apt",)
# With a default user, as WSL's Debian: sudo, and the user in group sudo.
DEBIAN_USER_EXTRA = ("sudo",)
ADMIN_GROUP = "sudo"
INSTALL_LOG = "/var/log/lx-install.log"
SECOND_STAGE = "/lx-second-stage"

_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


# ---------------------------------------------------------------------------
# The one place the installer runs a program inside a distro.


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def run_inside(distro: Distro, argv: list[str]) -> int:
    """Run `argv` (no shell) as root in `distro`, cwd /; returns its exit status.

    `distro` is not launchable yet (it is being installed), so this runs a
    private provider in this process (kernel.session.run_command) instead of
    asking the manager: nothing else may join an instance of a half-made
    distro.
    """
    from lxsub.kernel.session import run_command

    return run_command(distro, argv, user="root", cwd="/", mode="exec")


# ---------------------------------------------------------------------------
# Entry point


def install(
    registry: Registry,
    kind: str,
    *,
    name: str | None = None,
    location: str | Path | None = None,
    user: str | None = None,
    progress: Progress | None = None,
) -> Distro:
    """Install a distro of `kind` ("busybox" or "debian") as `name` (default: kind)."""
    if kind not in KINDS:
        raise LxError(f"unknown distro {kind!r} to install: choose {' or '.join(KINDS)}",
                      EXIT_USAGE)
    name = name or kind
    check_name(name)
    if user is not None:
        check_user_name(user)
    progress = progress or Progress()
    base = Path(location).expanduser().resolve() if location else lx_home() / "distros" / name
    rootfs = base / ROOTFS_DIR
    registry.check_new_name(name)  # checked again under the lock
    with progress:
        with registry.creating(name, rootfs, action="install", source=kind) as work:
            # The metadata store: xattrs, or SQLite where the file system has none.
            meta_db = choose_meta_db(registry, name, work, rootfs)
            if kind == "busybox":
                source = install_busybox(work, progress, user=user, meta_db=meta_db)
            else:
                source = install_debian(registry, name, work, progress, user=user,
                                        meta_db=meta_db)
            changes: dict = {"source": source}
            if user:
                changes["default_user"] = user
            registry.update(name, **changes)
        progress.note(f"Installed {name!r} ({source}) in {rootfs}")
    return registry.get(name)


def check_user_name(user: str) -> None:
    if user != "root" and not _USER_RE.fullmatch(user):
        raise LxError(
            f"invalid user name {user!r}: use lower-case letters, digits, '_' and '-', "
            "starting with a letter or '_' (at most 32)",
            EXIT_USAGE,
        )


# ---------------------------------------------------------------------------
# Running host tools


def _run(argv: list[str], what: str, *, cwd: Path | None = None, timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C", LANG="C", DEBIAN_FRONTEND="noninteractive")
    try:
        cp = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise LxError(f"{argv[0]} is not installed on the host; it is needed to {what} "
                      f"(install apt and dpkg)", EXIT_UNAVAILABLE) from None
    except subprocess.TimeoutExpired:
        raise LxError(f"{what} took longer than {timeout:.0f}s; check the network and retry",
                      EXIT_UNAVAILABLE) from None
    if check and cp.returncode != 0:
        raise LxError(f"{what} failed: {_last_line(cp.stderr) or f'exit {cp.returncode}'}",
                      EXIT_UNAVAILABLE)
    return cp


def _last_line(data: bytes) -> str:
    lines = [l.strip() for l in data.decode(errors="replace").splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith(("E:", "dpkg-deb: error"))]
    return (errors or lines or [""])[-1]


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/lx (default ~/.cache/lx): downloaded packages and lists."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lx"


class PrivateApt:
    """The host's apt, unprivileged, with its own lists and cache for one suite."""

    def __init__(self, suite: str = DEBIAN_SUITE, mirror: str | None = None,
                 arch: str | None = None) -> None:
        self.suite = suite
        self.mirror = mirror or os.environ.get("LX_DEBIAN_MIRROR") or DEFAULT_MIRROR
        self.arch = arch or _debian_arch()
        self.dir = cache_dir() / "apt" / f"{suite}-{self.arch}"
        self.archives = self.dir / "archives"
        for d in (self.dir / "lists" / "partial", self.archives / "partial", self.dir / "parts"):
            d.mkdir(parents=True, exist_ok=True)
        self.status = self.dir / "status"  # empty: apt resolves everything
        signed = f"[signed-by={DEBIAN_KEYRING}] " if os.path.exists(DEBIAN_KEYRING) else ""
        # Rewritten only when different: another lx may be reading them.
        for path, content in ((self.status, b""),
                              (self.dir / "sources.list",
                               f"deb {signed}{self.mirror} {suite} main\n".encode())):
            try:
                same = path.read_bytes() == content
            except OSError:
                same = False
            if not same:
                atomic_write(path, content)

    @contextlib.contextmanager
    def locked(self):
        """Serialise lx processes sharing this cache (apt runs with NoLocking)."""
        import fcntl

        fd = os.open(self.dir / "lx.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def options(self) -> list[str]:
        d = self.dir
        opts = {
            "Dir::State": d, "Dir::State::Lists": d / "lists", "Dir::State::status": self.status,
            "Dir::Cache": d, "Dir::Cache::archives": self.archives,
            "Dir::Cache::pkgcache": "", "Dir::Cache::srcpkgcache": "",
            "Dir::Etc::SourceList": d / "sources.list", "Dir::Etc::SourceParts": d / "parts",
            "Dir::Etc::Preferences": "/dev/null", "Dir::Etc::PreferencesParts": d / "parts",
            "APT::Architecture": self.arch, "APT::Architectures": self.arch,
            "APT::Install-Recommends": "false", "APT::Install-Suggests": "false",
            "Debug::NoLocking": "1", "Acquire::Languages": "none",
            "APT::Get::List-Cleanup": "false",
        }
        if os.geteuid() == 0:
            opts["APT::Sandbox::User"] = "root"  # _apt could not write to our cache
        result = []
        for key, value in opts.items():
            result += ["-o", f"{key}={value}"]
        return result

    def update(self) -> None:
        cp = _run(["apt-get", *self.options(), "-q", "update"],
                  f"fetching the package lists of Debian {self.suite} from {self.mirror}",
                  timeout=900, check=False)
        # apt-get update exits 0 when a mirror cannot be reached: its "Err:"
        # lines (stdout) and "W: Failed to fetch" (stderr, maybe the first line) say so.
        failed = re.search(rb"(^|\n)(Err:|W: Failed|E: )", cp.stdout + b"\n" + cp.stderr)
        if cp.returncode != 0 or failed:
            if any((self.dir / "lists").glob("*Packages*")):
                return  # offline, but earlier lists are cached: use them
            raise LxError(
                f"the Debian mirror {self.mirror} is unreachable (cannot fetch the {self.suite} "
                f"package lists: {_last_line(cp.stderr) or _last_line(cp.stdout)}); check the "
                "network or set LX_DEBIAN_MIRROR to a mirror that answers",
                EXIT_UNAVAILABLE,
            )

    def with_priority(self, priority: str) -> list[str]:
        cp = _run(["apt-cache", *self.options(), "dumpavail"], "reading the package lists")
        names = set()
        for para in cp.stdout.decode(errors="replace").split("\n\n"):
            fields = dict(_control_fields(para))
            if fields.get("Priority") == priority and "Package" in fields:
                names.add(fields["Package"])
        if not names:
            raise LxError(f"the Debian {self.suite} package lists name no {priority} packages; "
                          f"remove {self.dir} and retry", EXIT_UNAVAILABLE)
        return sorted(names)

    def resolve(self, packages: Iterable[str]) -> list[tuple[str, str, str]]:
        """(package, version, arch) of `packages` and everything they depend on."""
        cp = _run(["apt-get", *self.options(), "-s", "-q", "install", *packages],
                  "resolving the dependencies of the Debian packages")
        found = []
        for line in cp.stdout.decode(errors="replace").splitlines():
            m = re.match(r"Inst (\S+) \((\S+) .*\[(\S+)\]\)", line)
            if m:
                found.append((m.group(1), m.group(2), m.group(3)))
        if not found:
            raise LxError("apt resolved no packages to install", EXIT_SOFTWARE)
        return found

    def download(self, packages: list[tuple[str, str, str]]) -> list[Path]:
        wanted = [f"{p}={v}" for p, v, _ in packages]
        _run(["apt-get", *self.options(), "-q", "-y", "--download-only", "install", *wanted],
             f"downloading {len(wanted)} Debian packages from {self.mirror}", timeout=1800)
        return [self.deb_path(*pkg) for pkg in packages]

    def deb_path(self, package: str, version: str, arch: str) -> Path:
        path = self.archives / f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
        if not path.is_file():
            raise LxError(f"apt did not download {path.name}; remove {self.dir} and retry",
                          EXIT_UNAVAILABLE)
        return path


def _control_fields(paragraph: str) -> Iterable[tuple[str, str]]:
    for line in paragraph.splitlines():
        if line[:1] not in (" ", "\t") and ":" in line:
            key, value = line.split(":", 1)
            yield key, value.strip()


def _debian_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "riscv64": "riscv64",
            "ppc64le": "ppc64el", "s390x": "s390x"}.get(machine, machine)


def fetch_deb(package: str, dest: Path) -> Path:
    """One .deb of `package` in `dest`: `apt-get download` with the host's
    lists, else with a private bookworm list, else apt's own cache."""
    problems = []
    for attempt in ("host", "private"):
        argv = ["apt-get", "-q", "download", package]
        if attempt == "private":
            try:
                apt = PrivateApt()
                with apt.locked():
                    apt.update()
            except LxError as e:
                problems.append(e.message)
                continue
            argv[1:1] = apt.options()
        elif os.geteuid() == 0:
            argv[1:1] = ["-o", "APT::Sandbox::User=root"]
        try:
            cp = _run(argv, f"apt-get download {package}", cwd=dest, check=False, timeout=600)
        except LxError as e:
            problems.append(e.message)
            break
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if cp.returncode == 0 and debs:
            return debs[-1]
        problems.append(f"apt-get download {package} ({attempt} lists): {_last_line(cp.stderr)}")
    cached = sorted(Path("/var/cache/apt/archives").glob(f"{package}_*.deb"))
    if cached:
        return cached[-1]
    raise LxError(f"cannot get the Debian package {package}: {'; '.join(problems)}",
                  EXIT_UNAVAILABLE)


def deb_field(deb: Path, name: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), name], f"reading {deb.name}").stdout.decode().strip()


@contextlib.contextmanager
def deb_data(deb: Path):
    """The data archive of `deb` as an uncompressed tar stream."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc.stdout
    finally:
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        raise LxError(f"dpkg-deb could not unpack {deb}: {_last_line(err) or f'exit {code}'}; "
                      "remove it from the cache and retry", EXIT_UNAVAILABLE)


# ---------------------------------------------------------------------------
# Trees described as entries (shared by the installer and the test fixture)


@dataclass
class Entry:
    path: str            # relative, no leading '/'
    kind: str            # "dir", "file", "symlink"
    mode: int = 0o755    # permission bits (with setuid/setgid/sticky)
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    link: str = ""
    mtime: int = 0


def write_entries(entries: Iterable[Entry], writer: RootfsWriter) -> None:
    """Create `entries` in a VolFs tree."""
    for e in entries:
        times = (e.mtime * 1_000_000_000,) * 2
        if e.kind == "dir":
            writer.make_directory(e.path, LxMeta(stat.S_IFDIR | e.mode, e.uid, e.gid), times)
        elif e.kind == "file":
            writer.make_file(e.path, LxMeta(stat.S_IFREG | e.mode, e.uid, e.gid), e.data, times)
        elif e.kind == "symlink":
            writer.make_symlink(e.path, e.link, times)
        else:
            raise ValueError(f"unknown entry kind {e.kind!r}")


def write_entries_tar(entries: Iterable[Entry], tar: tarfile.TarFile,
                      names: dict[int, str] | None = None) -> None:
    """Add `entries` to a tar archive (owner names from `names`)."""
    names = names or {0: "root"}
    kinds = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}
    for e in entries:
        info = tarfile.TarInfo(e.path)
        info.type = kinds[e.kind]
        info.mode = 0o777 if e.kind == "symlink" else e.mode
        info.uid, info.gid = e.uid, e.gid
        info.uname, info.gname = names.get(e.uid, ""), names.get(e.gid, "")
        info.mtime = e.mtime
        info.linkname = e.link
        if e.kind == "file":
            info.size = len(e.data)
            tar.addfile(info, io.BytesIO(e.data))
        else:
            tar.addfile(info)


# ---------------------------------------------------------------------------
# BusyBox


BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_HOSTNAME = "busybox"

BUSYBOX_DIRS: dict[str, int] = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "usr/share": 0o755, "usr/share/doc": 0o755, "usr/share/doc/busybox-static": 0o755,
    "etc": 0o755, "root": 0o700, "home": 0o755, "tmp": 0o1777,
    "proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755, "mnt": 0o755,
    "var": 0o755, "var/tmp": 0o1777, "var/log": 0o755,
}


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str = "/bin/sh"
    gecos: str = ""


BUSYBOX_ACCOUNTS = (
    Account("root", 0, 0, "/root", gecos="root"),
    Account("nobody", 65534, 65534, "/nonexistent", "/bin/false", "nobody"),
)
DOOR_GROUP_BUSYBOX_GID = 999      # a system group, as groupadd --system picks first
BUSYBOX_GROUPS = (("root", 0), ("tty", 5), ("users", 100), ("nogroup", 65534))


def busybox_etc(accounts: Iterable[Account], groups: Iterable[tuple[str, int]],
                hostname: str, members: dict[str, list[str]] | None = None
                ) -> dict[str, tuple[int, bytes]]:
    """/etc files of a BusyBox distro: path -> (mode, content). `members`:
    supplementary members of groups, by group name."""
    accounts = list(accounts)
    members = members or {}
    group_lines = [f"{g}:x:{gid}:{','.join(members.get(g, []))}" for g, gid in groups]
    passwd = "".join(f"{a.name}:x:{a.uid}:{a.gid}:{a.gecos}:{a.home}:{a.shell}\n"
                     for a in accounts)
    shadow = "".join(f"{a.name}:{'*' if a.uid == 0 else '!'}:19000:0:99999:7:::\n"
                     for a in accounts)
    return {
        "etc/passwd": (0o644, passwd.encode()),
        "etc/group": (0o644, "".join(line + "\n" for line in group_lines).encode()),
        "etc/shadow": (0o600, shadow.encode()),
        "etc/hostname": (0o644, f"{hostname}\n".encode()),
        "etc/hosts": (0o644, (f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
                              "::1\tlocalhost ip6-localhost ip6-loopback\n").encode()),
        "etc/profile": (0o644, (
            "# /etc/profile: login shells (BusyBox ash)\n"
            'if [ "$(id -u)" -eq 0 ]; then PS1=\'\\u@\\h:\\w# \'; else PS1=\'\\u@\\h:\\w$ \'; fi\n'
            "export PS1\n").encode()),
        "etc/os-release": (0o644, (
            'NAME="BusyBox"\nID=busybox\nPRETTY_NAME="BusyBox (Debian busybox-static)"\n'
        ).encode()),
        "etc/lx.conf": (0o644, _LX_CONF_TEMPLATE.encode()),
    }


_LX_CONF_TEMPLATE = """\
# lx settings for this distro (INI, like WSL's wsl.conf). Examples:
# [user]
# default = alice
# [boot]
# command = /etc/init.d/ssh start
# [network]
# hostname = mybox
# [automount]
# enabled = true
# root = /mnt/
# users = @lxhost          # who may use /mnt/host (default: root, the default
#                          # user and group lxhost; * for everyone)
# [interop]
# enabled = true
# users = @lxhost          # who may run host programs (same default)
# appendHostPath = false   # true: host commands found by name after the distro's
"""


def busybox_entries(
    busybox: bytes,
    applets: Iterable[str],
    etc: dict[str, tuple[int, bytes]],
    *,
    copyright_: bytes | None = None,
    dirs: dict[str, tuple[int, int, int]] | None = None,
    mtime: int = 0,
    files_mtime: int = 0,
) -> list[Entry]:
    """The tree of a BusyBox distro: directories, /bin/busybox, an absolute
    symlink to it for every applet, and the given /etc files.

    `dirs` adds directories (path -> (mode, uid, gid)), e.g. homes.
    """
    all_dirs = {d: (mode, 0, 0) for d, mode in BUSYBOX_DIRS.items()}
    all_dirs.update(dirs or {})
    applets = sorted(set(applets) - {"", "bin/busybox", "linuxrc"})
    for applet in applets:
        parent = os.path.dirname(applet)
        while parent and parent not in all_dirs:
            all_dirs[parent] = (0o755, 0, 0)
            parent = os.path.dirname(parent)
    entries = [Entry(d, "dir", mode, uid, gid, mtime=files_mtime)
               for d, (mode, uid, gid) in sorted(all_dirs.items())]
    entries.append(Entry("bin/busybox", "file", 0o755, data=busybox, mtime=mtime))
    if copyright_ is not None:
        entries.append(Entry("usr/share/doc/busybox-static/copyright", "file", 0o644,
                             data=copyright_, mtime=mtime))
    for path in sorted(etc):
        mode, content = etc[path]
        entries.append(Entry(path, "file", mode, data=content, mtime=files_mtime))
    entries += [Entry(a, "symlink", link="/bin/busybox", mtime=files_mtime) for a in applets]
    return entries


def busybox_applets(binary: Path) -> list[str]:
    """Paths (no leading '/') of the applets a busybox binary provides."""
    cp = _run([str(binary), "--list-full"], f"listing the applets of {binary}")
    applets = sorted({line.strip().strip("/") for line in cp.stdout.decode().splitlines()}
                     - {"", "bin/busybox", "linuxrc"})
    if "bin/sh" not in applets:
        raise LxError(f"{binary} has no sh applet; it is not a usable busybox", EXIT_UNAVAILABLE)
    return applets


def is_static_elf64(path: Path) -> bool:
    """An ELF64 for this machine without PT_INTERP."""
    try:
        with open(path, "rb") as f:
            ehdr = f.read(64)
            if len(ehdr) < 64 or ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
                return False
            phoff = struct.unpack_from("<Q", ehdr, 32)[0]
            phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
            f.seek(phoff)
            phdrs = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", phdrs, i * phentsize)[0] != 3 for i in range(phnum))


def unpack_busybox_deb(deb: Path, work: Path) -> tuple[Path, Path | None]:
    """(bin/busybox, copyright file or None) from a busybox-static .deb."""
    tree = work / "deb"
    _run(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")
    binary = tree / "bin" / "busybox"
    if not is_static_elf64(binary):
        raise LxError(f"{deb} does not hold a static 64-bit bin/busybox", EXIT_UNAVAILABLE)
    copyright_ = tree / "usr/share/doc/busybox-static/copyright"
    return binary, copyright_ if copyright_.exists() else None


def install_busybox(work: Path, progress: Progress, user: str | None = None,
                    meta_db: Path | None = None) -> str:
    """Build a BusyBox distro in the empty directory `work`; returns its source label."""
    task = progress.task("Fetching busybox-static", total=None)
    with tempfile.TemporaryDirectory(prefix="lx-busybox-") as tmp:
        tmp_path = Path(tmp)
        dl = tmp_path / "download"
        dl.mkdir()
        deb = fetch_deb(BUSYBOX_PACKAGE, dl)
        version = deb_field(deb, "Version")
        binary, copyright_ = unpack_busybox_deb(deb, tmp_path)
        task.done()
        applets = busybox_applets(binary)
        accounts = list(BUSYBOX_ACCOUNTS)
        groups = list(BUSYBOX_GROUPS)
        dirs: dict[str, tuple[int, int, int]] = {}
        # The host doors' group (kernel/doors.py), with the default user in it.
        groups.insert(-1, (DOOR_GROUP, DOOR_GROUP_BUSYBOX_GID))
        members: dict[str, list[str]] = {}
        if user and user != "root":
            uid = 1000
            accounts.insert(1, Account(user, uid, uid, f"/home/{user}", gecos=user))
            groups.insert(-1, (user, uid))
            dirs[f"home/{user}"] = (0o755, uid, uid)
            members[DOOR_GROUP] = [user]
        now = int(time.time())
        entries = busybox_entries(
            binary.read_bytes(), applets,
            busybox_etc(accounts, groups, BUSYBOX_HOSTNAME, members),
            copyright_=copyright_.read_bytes() if copyright_ else None, dirs=dirs,
            mtime=int(binary.stat().st_mtime), files_mtime=now)
        task = progress.task("Installing busybox", total=len(entries))
        writer = RootfsWriter(work, meta_db)
        try:
            for entry in entries:
                write_entries([entry], writer)
                task.advance()
            writer.finish()
        finally:
            writer.close()
    return f"busybox {version}"


# ---------------------------------------------------------------------------
# Debian


def merged_usr(parts: list[str]) -> list[str]:
    """/bin/x -> /usr/bin/x and so on: bookworm's merged /usr."""
    if parts and parts[0] in _MERGED_USR:
        return ["usr", *parts]
    return parts


def install_debian(registry: Registry, name: str, work: Path, progress: Progress,
                   user: str | None = None, meta_db: Path | None = None) -> str:
    """Build Debian bookworm in `work`; returns its source label."""
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if not shutil.which(tool):
            raise LxError(f"{tool} is not installed on the host; lx --install debian needs "
                          "apt and dpkg", EXIT_UNAVAILABLE)
    apt = PrivateApt()
    with apt.locked():
        task = progress.task(f"Reading the Debian {apt.suite} package lists", total=None)
        apt.update()
        with_user = DEBIAN_USER_EXTRA if user and user != "root" else ()
        packages = apt.resolve([*apt.with_priority("required"), *DEBIAN_EXTRA, *with_user])
        task.done()
        task = progress.task(f"Downloading {len(packages)} packages", total=None)
        debs = apt.download(packages)
        task.done()
        stage_one(work, apt, packages, debs, progress, meta_db)  # reads the .debs from the cache
    stage_two(registry, name, work, packages, debs, progress, meta_db)
    if user and user != "root":
        add_debian_user(name, work, user, progress, meta_db)
    add_door_group(name, work, user, progress, meta_db)
    return f"debian {apt.suite}"


def stage_one(work: Path, apt: PrivateApt, packages: list[tuple[str, str, str]],
              debs: list[Path], progress: Progress, meta_db: Path | None = None) -> None:
    task = progress.task("Unpacking packages", total=len(debs))
    writer = RootfsWriter(work, meta_db)
    try:
        root_dir = LxMeta(stat.S_IFDIR | 0o755, 0, 0)
        writer.make_directory("usr", root_dir)
        for d in ("bin", "sbin", "lib", *(("lib64",) if apt.arch == "amd64" else ())):
            writer.make_directory(f"usr/{d}", root_dir)
            writer.make_symlink(d, f"usr/{d}")
        for deb in debs:
            with deb_data(deb) as stream:
                writer.add_archive(stream, deb.name, rename=merged_usr)
            task.advance()
        # What debootstrap's first stage adds: an empty dpkg database, a few
        # /etc files, apt's sources, the packages for the second stage.
        for d in ("var/lib/dpkg", "var/lib/dpkg/info", "var/lib/dpkg/updates",
                  "var/lib/dpkg/triggers", "var/cache/apt/archives", "var/cache/apt/archives/partial",
                  "var/log", "etc/apt"):
            writer.make_directory(d, root_dir)
        files = {
            "var/lib/dpkg/status": b"",
            "var/lib/dpkg/available": b"",
            "etc/fstab": b"# UNCONFIGURED FSTAB FOR BASE SYSTEM\n",
            "etc/hostname": b"debian\n",
            "etc/hosts": b"127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n"
                         b"::1\tlocalhost ip6-localhost ip6-loopback\n",
            "etc/apt/sources.list": (f"deb {apt.mirror} {apt.suite} main\n"
                                     f"deb {apt.mirror} {apt.suite}-updates main\n"
                                     f"deb http://security.debian.org/debian-security "
                                     f"{apt.suite}-security main\n").encode(),
            "etc/lx.conf": _LX_CONF_TEMPLATE.encode(),
        }
        resolv = _host_file("/etc/resolv.conf")
        if resolv is not None:
            files["etc/resolv.conf"] = resolv
        for path, content in files.items():
            writer.make_file(path, LxMeta(stat.S_IFREG | 0o644, 0, 0), content)
        for deb in debs:
            writer.make_file(f"var/cache/apt/archives/{deb.name}",
                             LxMeta(stat.S_IFREG | 0o644, 0, 0), deb.read_bytes())
        writer.finish()
    finally:
        writer.close()


def _host_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16)
    except OSError:
        return None


def second_stage_script(packages: list[tuple[str, str, str]], debs: list[Path]) -> str:
    """The shell script run inside the distro as root (debootstrap's second
    stage for minbase, in short)."""
    by_name = {p[0]: debs[i].name for i, p in enumerate(packages)}
    dpkg_version = next(v for p, v, _ in packages if p == "dpkg")

    def deb(*names: str) -> str:
        return " ".join(shlex.quote(by_name[n]) for n in names if n in by_name)

    everything = " ".join(shlex.quote(d.name) for d in debs)
    return f"""#!/bin/sh
# lx --install debian, second stage: run inside lxsub as root.
set -e
exec </dev/null >>{INSTALL_LOG} 2>&1
export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true
export LC_ALL=C LANG=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
step() {{ echo "lx-step: $*"; }}
cd /var/cache/apt/archives

step core
printf 'Package: dpkg\\nVersion: %s\\nMaintainer: unknown\\nStatus: install ok installed\\n\\n' \\
    {shlex.quote(dpkg_version)} > /var/lib/dpkg/status
: > /var/lib/dpkg/info/dpkg.list
/sbin/ldconfig
dpkg --force-depends --install {deb("base-passwd")}
dpkg --force-depends --install {deb("base-files")}
dpkg --force-depends --install {deb("dpkg")}
[ -e /etc/localtime ] || ln -sf /usr/share/zoneinfo/UTC /etc/localtime
dpkg --force-depends --install {deb("libc6")}
dpkg --force-depends --install {deb("perl-base")}
rm -f /usr/bin/awk
dpkg --force-depends --install {deb("mawk")}
dpkg --force-depends --install {deb("debconf")}

step unpack
dpkg --force-depends --unpack {everything}

step configure
printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
mv /usr/sbin/start-stop-daemon /usr/sbin/start-stop-daemon.REAL
printf '#!/bin/sh\\necho\\necho "Warning: Fake start-stop-daemon called, doing nothing"\\n' \\
    > /usr/sbin/start-stop-daemon
chmod 755 /usr/sbin/start-stop-daemon
dpkg --configure --pending --force-configure-any --force-depends
rm -f /usr/sbin/policy-rc.d
mv /usr/sbin/start-stop-daemon.REAL /usr/sbin/start-stop-daemon
dpkg --configure -a

step clean
rm -f /var/cache/apt/archives/*.deb
step done
"""


class _LogWatcher(threading.Thread):
    """Follows the second stage's log on the host and moves the bars."""

    def __init__(self, log: Path, progress: Progress, count: int) -> None:
        super().__init__(daemon=True)
        self.log = log
        self.stop = threading.Event()
        self.unpack = progress.task("Unpacking packages inside the distro", total=count)
        self.setup = progress.task("Configuring packages", total=count)
        self.steps: list[str] = []

    def run(self) -> None:
        pos = 0
        partial = b""
        while not self.stop.wait(0.3):
            try:
                with open(self.log, "rb") as f:
                    f.seek(pos)
                    data = f.read()
            except OSError:
                continue
            pos += len(data)
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            for line in lines:
                if line.startswith(b"Unpacking "):
                    self.unpack.advance()
                elif line.startswith(b"Setting up "):
                    self.setup.advance()
                elif line.startswith(b"lx-step: "):
                    self.steps.append(line[9:].decode(errors="replace"))


def stage_two(registry: Registry, name: str, work: Path, packages: list[tuple[str, str, str]],
              debs: list[Path], progress: Progress, meta_db: Path | None = None) -> None:
    script = second_stage_script(packages, debs)
    writer = RootfsWriter(work, meta_db)
    try:
        writer.make_file(SECOND_STAGE.lstrip("/"), LxMeta(stat.S_IFREG | 0o755, 0, 0),
                         script.encode())
        writer.make_file(INSTALL_LOG.lstrip("/"), LxMeta(stat.S_IFREG | 0o644, 0, 0), b"")
    finally:
        writer.close()
    log = work / INSTALL_LOG.lstrip("/")
    watcher = _LogWatcher(log, progress, len(packages))
    start_quiet_thread(watcher)
    distro = Distro(name=name, rootfs=work, meta_db=_str(meta_db))
    try:
        status = run_inside(distro, ["/bin/sh", SECOND_STAGE])
    finally:
        watcher.stop.set()
        watcher.join()
    if status == 128 + signal.SIGINT:
        raise KeyboardInterrupt  # Ctrl-C reached dpkg: clean up as for any interrupt
    if status != 0:
        kept = _keep_log(registry, name, log)
        detail = _last_log_line(log)
        raise LxError(
            f"configuring Debian inside lxsub failed (exit {status}"
            f"{', at step ' + watcher.steps[-1] if watcher.steps else ''}): {detail}; "
            f"full log: {kept}",
            EXIT_SOFTWARE,
        )
    watcher.unpack.done()
    watcher.setup.done()
    writer = RootfsWriter(work, meta_db)     # the script's record goes with it
    try:
        writer.remove(SECOND_STAGE.lstrip("/"))
    finally:
        writer.close()


def _keep_log(registry: Registry, name: str, log: Path) -> Path:
    kept = registry.home / f"install-{name}.log"
    with contextlib.suppress(OSError):
        shutil.copyfile(log, kept)
    return kept


def _last_log_line(log: Path) -> str:
    try:
        text = log.read_bytes()[-8192:].decode(errors="replace")
    except OSError:
        return "no log"
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("lx-step")]
    return lines[-1] if lines else "no output"


def add_debian_user(name: str, work: Path, user: str, progress: Progress,
                    meta_db: Path | None = None) -> None:
    """useradd inside the distro: home, group, shell as Debian does it, and
    group sudo (an administrator, as WSL's default user). No password yet:
    `lx --install` asks for one afterwards on a terminal (cli/distro_cmds.py)."""
    task = progress.task(f"Creating user {user}", total=None)
    distro = Distro(name=name, rootfs=work, meta_db=_str(meta_db))
    status = run_inside(distro, ["/usr/sbin/useradd", "--create-home", "--user-group",
                                 "--groups", ADMIN_GROUP, "--shell", "/bin/bash", user])
    if status != 0:
        raise LxError(f"useradd {user} failed inside the distro (exit {status})", EXIT_SOFTWARE)
    task.done()


def add_door_group(name: str, work: Path, user: str | None, progress: Progress,
                   meta_db: Path | None = None) -> None:
    """The group of the host doors (`lxhost`, see kernel/doors.py), a system
    group, with the default user in it: members may use /mnt/host and run
    host programs."""
    task = progress.task(f"Creating group {DOOR_GROUP}", total=None)
    distro = Distro(name=name, rootfs=work, meta_db=_str(meta_db))
    status = run_inside(distro, ["/usr/sbin/groupadd", "--force", "--system", DOOR_GROUP])
    if status == 0 and user and user != "root":
        status = run_inside(distro, ["/usr/sbin/usermod", "--append", "--groups", DOOR_GROUP,
                                     user])
    if status != 0:
        raise LxError(f"making group {DOOR_GROUP} for {user or 'root'} failed inside the "
                      f"distro (exit {status})", EXIT_SOFTWARE)
    task.done()


__all__ = [
    "KINDS", "Account", "Entry", "PrivateApt", "busybox_applets", "busybox_entries",
    "busybox_etc", "fetch_deb", "install", "is_static_elf64", "run_inside", "unpack_busybox_deb",
    "write_entries", "write_entries_tar",
]
