"""The /proc/sys tunables an instance sets for itself (kernel/sysctl.py):
root inside writes them, reads back what it wrote, and the calls they
govern follow them: the SysV limits, F_SETPIPE_SZ's ceiling, printk's
console levels beside syslog(2), ns_last_pid for the next fork. Each
script puts back the values it found (the Debian instance is shared)."""

from __future__ import annotations

import textwrap

import pytest

from tests.integration.distros import describe

pytestmark = [pytest.mark.debian]

PRELUDE = textwrap.dedent("""\
    import ctypes, errno, fcntl, os, resource
    libc = ctypes.CDLL(None, use_errno=True)
    def err():
        return errno.errorcode[ctypes.get_errno()]
    def get(name):
        with open("/proc/sys/" + name) as f:
            return f.read().strip()
    def put(name, value):
        with open("/proc/sys/" + name, "w") as f:
            f.write(str(value))
    def as_nobody(work):     # work() in a child with nobody's ids; its output
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.setgroups([]); os.setgid(65534); os.setuid(65534)
                os.write(w, str(work()).encode())
            finally:
                os._exit(0)
        os.close(w); os.waitpid(child, 0)
        return os.read(r, 100).decode()
    """)

IPC_PY = PRELUDE + textwrap.dedent("""\
    IPC_PRIVATE, IPC_RMID, SHM_HUGETLB = 0, 0, 0o4000
    old_mni, old_max = get("kernel/msgmni"), get("kernel/shmmax")
    try:
        put("kernel/msgmni", 2)
        put("kernel/shmmax", 8192)
        print("read", get("kernel/msgmni"), get("kernel/shmmax"))
        queues = [libc.msgget(IPC_PRIVATE, 0o600) for _ in range(2)]
        print("third queue", libc.msgget(IPC_PRIVATE, 0o600) == -1 and err())
        for q in queues:
            libc.msgctl(q, IPC_RMID, None)
        print("big segment", libc.shmget(IPC_PRIVATE, 8193, 0o600) == -1 and err())
        shm = libc.shmget(IPC_PRIVATE, 8192, 0o600)
        print("segment", shm >= 0)
        libc.shmctl(shm, IPC_RMID, None)
    finally:
        put("kernel/msgmni", old_mni)
        put("kernel/shmmax", old_max)
    # SHM_HUGETLB without CAP_IPC_LOCK locks against RLIMIT_MEMLOCK.
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    print("hugetlb", as_nobody(lambda: libc.shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | 0o600) == -1 and err()))
    """)


def test_sysv_limits_are_the_instances(debian):
    """msgmni and shmmax written inside govern msgget (ENOSPC) and shmget
    (EINVAL); SHM_HUGETLB is EPERM for nobody with no RLIMIT_MEMLOCK
    (LTP msgget03, shmget02)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", IPC_PY], timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "read 2 8192", "third queue ENOSPC", "big segment EINVAL", "segment True",
        "hugetlb EPERM"], describe(cp)


PIPE_PY = PRELUDE + textwrap.dedent("""\
    F_SETPIPE_SZ = 1031
    old = get("fs/pipe-max-size")
    def grow():
        r, w = os.pipe()
        try:
            return fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 17)   # more than the 16 pages it has
        except OSError as e:
            return errno.errorcode[e.errno]
    try:
        put("fs/pipe-max-size", 5000)          # stored as a power of two pages
        print("read", get("fs/pipe-max-size"))
        print("nobody", as_nobody(grow))
        print("root", grow())
    finally:
        put("fs/pipe-max-size", old)
    print("restored", get("fs/pipe-max-size") == old)
    """)


def test_pipe_max_size_is_the_instances(debian):
    """fs/pipe-max-size: written, read back rounded as Linux stores it, and
    F_SETPIPE_SZ above it is EPERM without CAP_SYS_RESOURCE (LTP splice06)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", PIPE_PY], timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "read 8192", "nobody EPERM", "root 131072", "restored True"], describe(cp)


PRINTK_PY = PRELUDE + textwrap.dedent("""\
    CONSOLE_OFF, CONSOLE_ON, CONSOLE_LEVEL = 6, 7, 8
    old = get("kernel/printk")
    try:
        put("kernel/printk", "5 4 2 7")
        print("read", get("kernel/printk").split())
        libc.syscall(103, CONSOLE_OFF, None, 0)
        print("off", get("kernel/printk").split()[0])     # the console's lowest level
        libc.syscall(103, CONSOLE_ON, None, 0)
        libc.syscall(103, CONSOLE_LEVEL, None, 1)         # raised to the lowest
        print("level", get("kernel/printk").split()[0])
    finally:
        put("kernel/printk", old)
    """)


def test_printk_levels_are_syslogs(debian):
    """kernel/printk holds the levels syslog(2) sets (LTP syslog11)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", PRINTK_PY], timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "read ['5', '4', '2', '7']", "off 2", "level 2"], describe(cp)


LAST_PID_PY = PRELUDE + textwrap.dedent("""\
    def child():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        return pid
    first = child()
    kept = os.open(f"/proc/{first}", os.O_RDONLY | os.O_DIRECTORY)
    os.waitpid(first, 0)
    put("kernel/ns_last_pid", first - 1)
    print("read", int(get("kernel/ns_last_pid")) == first - 1)
    again = os.fork()
    if again == 0:
        import time; time.sleep(2); os._exit(0)
    print("same pid", again == first)
    print("new inode", os.stat(f"/proc/{again}").st_ino != os.fstat(kept).st_ino)
    os.waitpid(again, 0)
    """)


def test_ns_last_pid_sets_the_next_pid(debian):
    """Writing ns_last_pid makes the next fork take the pid after it, a
    reaped child's pid included, whose /proc directory is a new inode
    (LTP pidfd_send_signal03)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", LAST_PID_PY], timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == ["read True", "same pid True", "new inode True"], describe(cp)


NEXT_ID_PY = PRELUDE + textwrap.dedent("""\
    IPC_PRIVATE, IPC_RMID, IPC_STAT = 0, 0, 2
    buf = ctypes.create_string_buffer(256)
    put("kernel/msg_next_id", 5 << 15 | 9)
    q = libc.msgget(IPC_PRIVATE, 0o600)
    print("msg", q == 5 << 15 | 9, get("kernel/msg_next_id"), libc.msgctl(q, IPC_STAT, buf),
          int.from_bytes(buf.raw[24:26], "little"))          # msg_perm.__seq
    put("kernel/sem_next_id", 12345)
    s = libc.semget(IPC_PRIVATE, 1, 0o600)
    print("sem", s, get("kernel/sem_next_id"))
    put("kernel/msg_next_id", q)           # taken: the next free index, same sequence
    again = libc.msgget(IPC_PRIVATE, 0o600)
    print("taken", again == q + 1)
    for ident in (q, again):
        libc.msgctl(ident, IPC_RMID, None)
    libc.semctl(s, 0, IPC_RMID, 0)
    """)


def test_next_ids_are_the_instances(debian):
    """{msg,sem,shm}_next_id: the id the next object gets, once (then -1);
    the ids are the instance's own, not the host objects' (LTP msgget04,
    msgget05, shmget05, shmget06)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", NEXT_ID_PY], timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == ["msg True -1 0 5", "sem 12345 -1", "taken True"], describe(cp)


INOTIFY_PY = PRELUDE + textwrap.dedent("""\
    IN_NONBLOCK = os.O_NONBLOCK
    old = get("fs/inotify/max_user_instances")
    held = [libc.inotify_init1(0) for _ in range(2)]
    try:
        put("fs/inotify/max_user_instances", 3)
        put("fs/inotify/max_user_instances", -1)            # EINVAL: the value stays
        print("read", get("fs/inotify/max_user_instances"))
        third = libc.inotify_init1(IN_NONBLOCK)
        print("third", third >= 0, fcntl.fcntl(third, fcntl.F_GETFL) & os.O_NONBLOCK != 0)
        print("fourth", libc.inotify_init() == -1 and err())
        # A descriptor a child still holds keeps its instance counted.
        child = os.fork()
        if child == 0:
            os.close(held[0]); os.close(held[1])        # keeps its copy of third
            time_ = __import__("time"); time_.sleep(3); os._exit(0)
        os.close(third)
        print("held by child", libc.inotify_init1(0) == -1 and err())
        os.kill(child, 9); os.waitpid(child, 0)
        again = libc.inotify_init1(0)
        print("after child", again >= 0)
        # Another user has a count of its own.
        print("nobody", as_nobody(lambda: libc.inotify_init1(0) >= 0))
        print("flags", libc.inotify_init1(1) == -1 and err())
    finally:
        put("fs/inotify/max_user_instances", old)
    print("restored", get("fs/inotify/max_user_instances") == old)
    """)


def test_inotify_max_user_instances_is_the_instances(debian):
    """fs/inotify/max_user_instances: written and read back, and
    inotify_init beyond it is EMFILE for that user; an inotify instance
    counts until its last descriptor closes, wherever that is (LTP
    inotify06 writes it)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", INOTIFY_PY], timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "read 3", "third True True", "fourth EMFILE", "held by child EMFILE", "after child True",
        "nobody True", "flags EINVAL", "restored True"], describe(cp)


NR_OPEN_PY = PRELUDE + textwrap.dedent("""\
    CLONE_FILES, SIGCHLD, SYS_clone = 0x400, 17, 56
    libc.syscall.restype = ctypes.c_long
    def unshare_in_sharing_child():    # unshare(CLONE_FILES) in a child sharing our table
        pid = libc.syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            os._exit(0 if libc.unshare(CLONE_FILES) == 0 else ctypes.get_errno())
        return os.strerror(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    old = get("fs/nr_open")
    os.dup2(2, 65)
    try:
        put("fs/nr_open", 64)
        put("fs/nr_open", 63)                  # below a word: EINVAL, the value stays
        print("read", get("fs/nr_open"))
        print("shared", unshare_in_sharing_child())
        print("own table", libc.unshare(CLONE_FILES))
        os.close(65)
        print("after close", unshare_in_sharing_child())
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        def set_limit(how):
            try:
                how()
                return "ok"
            except OSError as e:
                return errno.errorcode[e.errno]
            except ValueError:            # Python's word for setrlimit's EPERM
                return "EPERM"
        print("setrlimit", set_limit(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits)),
              set_limit(lambda: resource.prlimit(0, resource.RLIMIT_NOFILE, limits)),
              libc.syscall(160, resource.RLIMIT_NOFILE, (ctypes.c_ulong * 2)(*limits)) == -1 and err())
    finally:
        put("fs/nr_open", old)
    print("restored", get("fs/nr_open") == old,
          set_limit(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits)))
    """)


def test_nr_open_bounds_the_copy_of_a_shared_table(debian):
    """fs/nr_open: written (64 at least) and read back; unshare(CLONE_FILES)
    of a table shared with another process fails with EMFILE when its
    highest descriptor is beyond it, and is a no-op for a table of one's
    own (LTP unshare03); a hard RLIMIT_NOFILE above it is EPERM
    (setrlimit, prlimit64, the old setrlimit call)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", NR_OPEN_PY], timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "read 64", "shared Too many open files", "own table 0", "after close Success",
        "setrlimit EPERM EPERM EPERM", "restored True ok"], describe(cp)
