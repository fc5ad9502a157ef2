"""lxsub/abi: the one home of Linux's numbers. Each one agrees with the
host's C headers (a program printing them is built with gcc), abi imports
nothing of lxsub, and no other module writes a syscall number again."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re
import subprocess
from pathlib import Path

import pytest

import lxsub
from lxsub import abi
from lxsub.abi import limits, seccomp, sysno
from tests.fixtures.cbuild import gcc_static

SRC = Path(lxsub.__file__).resolve().parent
HEADERS = ("fcntl.h", "stdio.h", "sched.h", "signal.h", "elf.h", "limits.h", "sys/stat.h",
           "sys/prctl.h", "sys/statvfs.h", "sys/syscall.h", "linux/openat2.h", "linux/seccomp.h", "linux/magic.h",
           "linux/keyctl.h", "linux/kcmp.h", "linux/filter.h", "linux/ptrace.h",
           "sys/socket.h", "linux/netlink.h", "sys/ipc.h", "sys/shm.h", "sys/sem.h", "sys/msg.h", "sys/inotify.h",
           "sys/fanotify.h", "sys/mman.h", "sys/personality.h", "sys/resource.h")

# Numbers that no header a program includes defines, each checked another way below.
NOT_IN_HEADERS = {
    "PAGE_SIZE",          # sysconf(_SC_PAGESIZE)
    "MAX_ARG_STRLEN",     # linux/binfmts.h needs the kernel's PAGE_SIZE: 32 pages
    "OVERFLOW_ID",        # /proc/sys/kernel/overflowuid
    "MAXSYMLINKS",        # include/linux/namei.h (glibc's sys/param.h has another, 20)
    "CONFIGFS_MAGIC",     # fs/configfs/mount.c
    "FUSECTL_SUPER_MAGIC",  # fs/fuse/control.c
    "SELINUX_MAGIC", "SMACK_MAGIC",     # in linux/magic.h, checked if there
    "ST_VALID",           # include/linux/statfs.h, not exported to programs
    "ALL_INOTIFY_BITS",   # include/linux/inotify.h, not exported; its parts are checked
    "AT_HANDLE_FID", "AT_HANDLE_CONNECTABLE",   # linux/fcntl.h of Linux 6.5 and 6.13, checked if there
    "SO_PASSPIDFD", "SO_PEERPIDFD",     # asm/socket.h of Linux 6.5, checked if there
    "STATX_MNT_ID_UNIQUE",               # linux/stat.h of Linux 6.8, checked if there
    "F_CREATED_QUERY",                   # linux/fcntl.h of Linux 6.12, checked if there
    "SCM_MAX_FD",         # include/net/scm.h, not exported to programs
    "UIO_MAXIOV",         # linux/uio.h clashes with glibc's struct iovec: sysconf(_SC_IOV_MAX)
    "ELF_ET_DYN_BASE",    # arch/x86/include/asm/elf.h, not exported: where a PIE is loaded
    "MMAP_RND_BITS",      # CONFIG_ARCH_MMAP_RND_BITS default: /proc/sys/vm/mmap_rnd_bits
    "SYS_SECCOMP",        # SIGSYS's si_code: only asm-generic/siginfo.h, which clashes with signal.h
    "FAN_REPORT_FD_ERROR", "FAN_REPORT_MNT", "FAN_MARK_MNTNS",   # linux/fanotify.h of 6.13-6.14, checked if there
    # include/linux/fanotify.h, not exported: unions of bits checked above
    "FANOTIFY_INIT_FLAGS", "FANOTIFY_FID_BITS", "FANOTIFY_MARK_CMD_BITS", "FANOTIFY_MARK_TYPE_BITS",
    "FANOTIFY_MARK_FLAGS", "FANOTIFY_PATH_EVENTS", "FANOTIFY_PERM_EVENTS", "FANOTIFY_DIRENT_EVENTS",
    "FANOTIFY_INODE_EVENTS", "FANOTIFY_EVENT_FLAGS", "FANOTIFY_MARK_MASK", "FANOTIFY_FD_EVENTS",
    "EVENT_F_BITS",       # FANOTIFY_INIT_ALL_EVENT_F_BITS: O_* flags checked above
    "SUPPORTED_INIT_FLAGS",   # lxsub's own choice among the flags
}
# Not macros: C expressions that give them (glibc's F_OWNER_* and personality flags are enums).
EXPRESSIONS = {"SIZEOF_STATX": "sizeof(struct statx)", "F_OWNER_TID": "F_OWNER_TID",
               "ADDR_NO_RANDOMIZE": "ADDR_NO_RANDOMIZE",     # an enum of sys/personality.h
               "F_OWNER_PID": "F_OWNER_PID", "F_OWNER_PGRP": "F_OWNER_PGRP",
               **{n: n for n in ("KCMP_FILE", "KCMP_VM", "KCMP_FILES", "KCMP_FS", "KCMP_SIGHAND",
                                 "KCMP_IO", "KCMP_SYSVSEM", "KCMP_EPOLL_TFD", "KCMP_TYPES")}}


def _abi_constants() -> dict[str, int]:
    out: dict[str, int] = {}
    for info in pkgutil.iter_modules(abi.__path__):
        if info.name == "sysno":
            continue
        mod = importlib.import_module(f"lxsub.abi.{info.name}")
        for name, value in vars(mod).items():
            if name.isupper() and isinstance(value, int):
                out[name] = value
    return out


def _header_values(tmp_path: Path, names) -> dict[str, int]:
    lines = ["#define _GNU_SOURCE"] + [f"#include <{h}>" for h in HEADERS] + ["int main(void) {"]
    for c_name in names:
        show = f'    printf("{c_name} %lld\\n", (long long)({EXPRESSIONS.get(c_name, c_name)}));'
        lines += [show] if c_name in EXPRESSIONS else [f"#ifdef {c_name}", show, "#endif"]
    lines += ["    return 0;", "}"]
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines) + "\n")
    prog = gcc_static(tmp_path, "abi", src)
    out = subprocess.run([str(prog)], capture_output=True, check=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_constants_agree_with_the_c_headers(tmp_path):
    ours = _abi_constants()
    theirs = _header_values(tmp_path, sorted(ours))
    wrong = {n: (v, theirs[n]) for n, v in ours.items() if n in theirs and theirs[n] != v}
    assert not wrong, f"abi value, header value: {wrong}"
    unchecked = set(ours) - set(theirs) - NOT_IN_HEADERS
    assert not unchecked, f"not in the headers and not checked otherwise: {sorted(unchecked)}"
    assert len(theirs) > 80


def test_constants_without_a_header_agree_with_the_running_kernel():
    page = os.sysconf("SC_PAGE_SIZE")
    assert limits.PAGE_SIZE == page and limits.MAX_ARG_STRLEN == 32 * page
    assert limits.UIO_MAXIOV == os.sysconf("SC_IOV_MAX")
    with open("/proc/sys/kernel/overflowuid") as f:
        assert limits.OVERFLOW_ID == int(f.read())
    siginfo = Path("/usr/include/asm-generic/siginfo.h").read_text()
    assert seccomp.SYS_SECCOMP == int(re.search(r"#define SYS_SECCOMP\s+(\d+)", siginfo).group(1))


def test_syscall_numbers_agree_with_the_c_headers(tmp_path):
    theirs = _header_values(tmp_path, [f"SYS_{n}" for n in sysno.NUMBERS])
    wrong = {n: (v, theirs[f"SYS_{n}"]) for n, v in sysno.NUMBERS.items()
             if f"SYS_{n}" in theirs and theirs[f"SYS_{n}"] != v}
    assert not wrong
    assert len(theirs) > 300          # a recent libc knows nearly all of them
    for name, value in vars(sysno).items():
        if name.startswith("SYS_"):
            assert sysno.NUMBERS[name[4:].lower()] == value


def _modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def test_abi_imports_nothing_of_lxsub():
    """The bottom floor: platform/ and kernel/ both build on it."""
    for path, tree in _modules(SRC / "abi"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("lxsub"), f"{path}: imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("lxsub") for a in node.names), path


def _int_literal(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int or (
        isinstance(node, ast.Tuple) and any(_int_literal(e) for e in node.elts))


@pytest.mark.parametrize("prefix", ["SYS_", "_SYS_"])
def test_no_other_module_writes_a_syscall_number(prefix):
    found = []
    for path, tree in _modules(SRC):
        if path.is_relative_to(SRC / "abi"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _int_literal(node.value):
                for target in node.targets:
                    names = target.elts if isinstance(target, ast.Tuple) else [target]
                    found += [f"{path.relative_to(SRC)}:{node.lineno} {n.id}" for n in names
                              if isinstance(n, ast.Name) and n.id.startswith(prefix)]
    assert not found, "syscall numbers belong in lxsub/abi/sysno.py: " + ", ".join(found)
