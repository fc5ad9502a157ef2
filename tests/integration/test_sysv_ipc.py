"""System V IPC inside an instance (kernel/syscalls/ipc.py): keys and ids
of the instance's own work between its processes as on Linux; the host's
are out of reach (tests/security/test_escape.py::test_sysv_ipc_of_the_host_is_not_reachable)."""

from __future__ import annotations

import textwrap

import pytest

from tests.integration.distros import describe

pytestmark = [pytest.mark.debian]

SYSV_PY = textwrap.dedent("""\
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    KEY, CREAT, EXCL = 0x4C5853, 0o1000, 0o2000
    def err():
        return errno.errorcode[ctypes.get_errno()]
    print("absent", libc.shmget(KEY, 4096, 0) == -1 and err())
    shm = libc.shmget(KEY, 4096, CREAT | 0o600)
    print("excl", libc.shmget(KEY, 4096, CREAT | EXCL | 0o600) == -1 and err())
    child = os.fork()
    if child == 0:
        same = libc.shmget(KEY, 4096, 0)
        at = libc.shmat(same, None, 0)
        ctypes.memmove(at, b"from the child", 14)
        q = libc.msgget(KEY, CREAT | 0o600)
        libc.msgsnd(q, (1).to_bytes(8, "little") + b"queued", 6, 0)
        os._exit(0 if same == shm else 1)
    print("child", os.waitpid(child, 0)[1])
    at = libc.shmat(shm, None, 0)
    print(ctypes.string_at(at, 14).decode())
    q = libc.msgget(KEY, 0)
    buf = ctypes.create_string_buffer(64)
    n = libc.msgrcv(q, buf, 56, 0, 0o4000)
    print("msg", buf.raw[8:8 + n].decode())
    sem = libc.semget(KEY, 1, CREAT | 0o600)
    op = (ctypes.c_short * 3)(0, 1, 0)
    print("semop", libc.semop(sem, op, 1), libc.semctl(sem, 0, 12))   # GETVAL
    for rm, ident in ((libc.shmctl, shm), (libc.msgctl, q), (libc.semctl, sem)):
        print("rm", rm(ident, 0, 0) if rm is not libc.semctl else rm(ident, 0, 0, 0))
    print("gone", libc.shmget(KEY, 4096, 0) == -1 and err(), libc.shmat(shm, None, 0) == 2**64 - 1
          and err())
    """)


def test_sysv_ipc_in_the_instance(debian):
    cp = debian.exe("python3", "-u", "-c", SYSV_PY, timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "absent ENOENT", "excl EEXIST", "child 0", "from the child", "msg queued",
        "semop 0 1", "rm 0", "rm 0", "rm 0", "gone ENOENT EINVAL"], describe(cp)


# A segment and a queue of sizes no other test uses, to find them on the
# host: the instance's ids are its own, not the host objects' ids.
_SEGMENT_SIZE, _MESSAGE_SIZE = 4096 * 13 + 7, 4321


def _host_objects() -> set[tuple[str, int]]:
    """(kind, host id) of the host's segments and queues of those sizes."""
    found = set()
    for kind, column, size in (("shm", 3, _SEGMENT_SIZE), ("msg", 3, _MESSAGE_SIZE)):
        with open(f"/proc/sysvipc/{kind}") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if int(fields[column]) == size:
                    found.add((kind, int(fields[1])))
    return found


def test_sysv_objects_end_with_the_instance(debian):
    """Objects a program leaves behind are removed when its instance ends."""
    keep = debian.runner.hold(debian.name, 120)
    make = ("import ctypes; l = ctypes.CDLL(None); "
            f"l.shmget(0x4C5854, {_SEGMENT_SIZE}, 0o1000 | 0o600); q = l.msgget(0x4C5854, 0o1000 | 0o600); "
            f"print(l.msgsnd(q, (1).to_bytes(8, 'little') + bytes({_MESSAGE_SIZE}), {_MESSAGE_SIZE}, 0))")
    before = _host_objects()
    cp = debian.exe("python3", "-c", make, timeout=120)
    assert cp.returncode == 0 and cp.stdout.split() == [b"0"], describe(cp)
    try:
        made = _host_objects() - before
        assert {kind for kind, _ in made} == {"shm", "msg"}, made
        assert debian.runner.run(["--terminate", debian.name], timeout=60).returncode == 0
        assert not made & _host_objects(), made
    finally:
        keep.kill()
        keep.wait()


def test_ipc_stat_shows_the_key_an_object_was_made_with(busybox, tmp_path):
    """The host made the objects IPC_PRIVATE (key 0); IPC_STAT shows the
    instance's key, as msgctl(2)'s msg_perm.__key (LTP msgctl01); the pids
    the host recorded (last sender, receiver, creator, attacher) are the
    instance's (LTP msgsnd01, msgrcv01)."""
    from tests.fixtures.cbuild import PROGRAMS, gcc_static
    from tests.integration.distros import run_probe
    program = gcc_static(tmp_path, "sysv_stat_key", PROGRAMS / "sysv_stat_key.c").read_bytes()
    out = run_probe(busybox, program, "/sysv/stat_key")
    assert out == {"msg 4c5301": "", "shm 4c5302": "", "sem 4c5303": "",
                   "pids same": "same same same", "sempid same": ""}, out


SYSVIPC_PY = textwrap.dedent("""\
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    KEY = 0x4C5855
    ids = (libc.shmget(KEY, 8192, 0o1000 | 0o640), libc.msgget(KEY, 0o1000 | 0o600),
           libc.semget(KEY, 3, 0o1000 | 0o604))
    print("made", os.getpid(), *ids)
    for kind in ("shm", "msg", "sem"):
        with open("/proc/sysvipc/" + kind) as f:
            for line in f.read().splitlines():
                print(kind, line)
    libc.shmctl(ids[0], 0, 0); libc.msgctl(ids[1], 0, 0); libc.semctl(ids[2], 0, 0, 0)
    """)


def test_proc_sysvipc_shows_the_instances_objects(debian):
    """/proc/sysvipc/{shm,msg,sem} list the instance's objects only, with
    its keys, the Linux uid that made them (1000 here, through setpriv) and
    pids in the instance; a host object, key and id, is not among them.
    ipcs(1) reads these files."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    host_key = 0x4C5856
    host = libc.shmget(host_key, 4096, 0o1000 | 0o666)
    assert host >= 0
    try:
        cp = debian.lx(["-u", "root", "-e", "setpriv", "--reuid=1000", "--regid=1000",
                        "--clear-groups", "python3", "-c", SYSVIPC_PY], timeout=120)
    finally:
        libc.shmctl(host, 0, None)
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode().splitlines()
    _, pid, shm, msg, sem = lines[0].split()
    rows = {kind: [line.split()[1:] for line in lines[1:] if line.startswith(kind + " ")]
            for kind in ("shm", "msg", "sem")}
    for kind, ident, header in (("shm", shm, "shmid"), ("msg", msg, "msqid"), ("sem", sem, "semid")):
        head, *objects = rows[kind]
        assert head[:2] == ["key", header], rows[kind]
        assert [o[1] for o in objects] == [ident], (kind, objects)       # its own only
        assert objects[0][0] == str(0x4C5855)
        assert str(host_key) not in [o[0] for o in objects] and str(host) not in [o[1] for o in objects]
    shm_row, msg_row, sem_row = rows["shm"][1], rows["msg"][1], rows["sem"][1]
    assert shm_row[2:5] == ["640", "8192", pid] and shm_row[7:11] == ["1000"] * 4, shm_row
    assert msg_row[2] == "600" and msg_row[7:11] == ["1000"] * 4, msg_row
    assert sem_row[2:4] == ["604", "3"] and sem_row[4:8] == ["1000"] * 4, sem_row


SYSV_INFO_PY = textwrap.dedent("""\
    import ctypes, errno, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    KEY, CREAT = 0x4C5857, 0o1000
    IPC_INFO, MSG_STAT, MSG_INFO, MSG_STAT_ANY = 3, 11, 12, 13
    SHM_STAT, SHM_INFO, SEM_STAT, SEM_INFO = 13, 14, 18, 19
    host_msg = int(sys.argv[1])
    buf = ctypes.create_string_buffer(256)
    msg = libc.msgget(KEY, CREAT | 0o600)
    shm = libc.shmget(KEY, 3 * 4096 + 1, CREAT | 0o600)
    sem = libc.semget(KEY, 5, CREAT | 0o600)
    libc.msgsnd(msg, (1).to_bytes(8, "little") + b"seven b", 7, 0)
    libc.msgsnd(msg, (1).to_bytes(8, "little") + b"abc", 3, 0)
    idx = libc.msgctl(0, MSG_INFO, buf)
    pool, msgmap, _, _, _, _, tql = struct.unpack_from("<7i", buf.raw)
    print("msg_info", pool, msgmap, tql, libc.msgctl(0, IPC_INFO, buf) == idx)
    print("msg_stat", libc.msgctl(idx, MSG_STAT, buf) == msg, hex(struct.unpack_from("<i", buf.raw)[0]))
    print("msg_stat_any host", libc.msgctl(host_msg, MSG_STAT_ANY, buf), errno.errorcode[ctypes.get_errno()])
    idx = libc.semctl(0, 0, SEM_INFO, buf)
    print("sem_info", *struct.unpack_from("<10i", buf.raw)[7::2], libc.semctl(idx, 0, SEM_STAT, buf) == sem)
    idx = libc.shmctl(0, SHM_INFO, buf)
    used, tot = struct.unpack_from("<i4xQ", buf.raw)
    print("shm_info", used, tot, libc.shmctl(idx, SHM_STAT, buf) == shm)
    libc.shmctl(shm, 0, 0); libc.msgctl(msg, 0, 0); libc.semctl(sem, 0, 0, 0)
    """)


def test_ipc_info_and_stat_by_index_show_the_instances_table(debian):
    """MSG_INFO, SEM_INFO and SHM_INFO sum up the instance's objects, not
    the host's (a host queue with messages is not counted), and return the
    highest index in use, as IPC_INFO does; MSG_STAT/SEM_STAT/SHM_STAT at
    that index give the object's id and its Linux view (the key); a host
    object's index is no object of the instance (EINVAL). ipcs -u and LTP
    msgctl06, msgctl12, semctl01, semctl09, shmctl01, shmctl04."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    host = libc.msgget(0x4C5858, 0o1000 | 0o600)
    assert host >= 0
    try:
        assert libc.msgsnd(host, (1).to_bytes(8, "little") + b"host", 4, 0) == 0
        cp = debian.exe("python3", "-c", SYSV_INFO_PY, str(host), timeout=120)
    finally:
        libc.msgctl(host, 0, None)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "msg_info 1 2 10 True", f"msg_stat True {0x4C5857:#x}", "msg_stat_any host -1 EINVAL",
        "sem_info 1 5 True", "shm_info 1 4 True"], describe(cp)


SHM_LOCK_PY = textwrap.dedent("""\
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    SHM_LOCK, SHM_UNLOCK, GETPID = 11, 12, 11
    def outcome(result):
        return result if result != -1 else errno.errorcode[ctypes.get_errno()]
    shm = libc.shmget(0, 4096, 0o1000 | 0o600)
    sem = libc.semget(0, 1, 0o1000 | 0o600)
    os.seteuid(1000)
    print("lock", outcome(libc.shmctl(shm, SHM_LOCK, 0)), outcome(libc.shmctl(shm, SHM_UNLOCK, 0)))
    print("getpid", outcome(libc.semctl(sem, 0, GETPID)))
    os.seteuid(0)
    libc.shmctl(shm, 0, 0); libc.semctl(sem, 0, 0, 0)
    """)


def test_shm_lock_needs_ownership_not_read_permission(debian):
    """SHM_LOCK and SHM_UNLOCK of another user's segment are EPERM
    (ipc/shm.c shmctl_do_lock: the owner, the creator or CAP_IPC_LOCK),
    with no read permission asked first, though semctl's GETPID and GETVAL
    have their numbers and do need it (LTP shmctl02)."""
    cp = debian.exe("python3", "-c", SHM_LOCK_PY, timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == ["lock EPERM EPERM", "getpid EACCES"], describe(cp)
