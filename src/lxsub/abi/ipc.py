"""<sys/ipc.h>, <sys/shm.h>, <sys/sem.h>, <sys/msg.h>: SysV IPC keys, flags
and control commands."""

IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_RMID = 0
IPC_SET = 1
IPC_STAT = 2
IPC_INFO = 3
# semctl's commands on a set's values
GETPID, GETVAL, GETALL, GETNCNT, GETZCNT, SETVAL, SETALL = range(11, 18)
# shmctl's, and shmat's flags
SHM_LOCK, SHM_UNLOCK = 11, 12
SHM_RDONLY, SHM_EXEC = 0o10000, 0o100000
SHM_HUGETLB = 0o4000                 # shmget's flag: a segment of huge pages

# ctl commands whose first argument is an index into the host's table, or
# that sum it up (ipcs's fallback when /proc/sysvipc is missing).
MSG_STAT, MSG_INFO, MSG_STAT_ANY = 11, 12, 13
SHM_STAT, SHM_INFO, SHM_STAT_ANY = 13, 14, 15
SEM_STAT, SEM_INFO, SEM_STAT_ANY = 18, 19, 20
