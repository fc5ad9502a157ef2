"""lxsub: a Linux subsystem in Python.

Layout (see docs/ARCHITECTURE.md):
  cli/       the `lx` command
  distro/    importing and exporting root file systems
  platform/  pico processes: seccomp, ptrace, user-notify, tracee memory
  kernel/    the provider: tasks, credentials, signals, VFS, syscall table
"""

__version__ = "0.1.0"

# The release string `uname -r` reports inside an instance: the newest Linux
# whose additions to the user interface lxsub keeps (programs and test suites
# check the release before they use what it brought). Up to 6.13:
# - run by the host as they are (native): cachestat (6.5), map_shadow_stack
#   (6.6), futex_wake/wait/requeue (6.7), UFFDIO_MOVE (6.8), mseal and
#   F_DUPFD_QUERY (6.10), uretprobe (6.11), MADV_GUARD_INSTALL (6.13);
#   F_CREATED_QUERY (6.12) too, but for VolFs's new files, which the
#   provider marks (kernel/vfs/created.py);
# - answered by the provider: fchmodat2 (6.6); statmount and listmount (6.8,
#   with the 6.9-6.13 fields and LISTMOUNT_REVERSE) over the instance's mount
#   table, statx's STATX_MNT_ID_UNIQUE and the lsm_* calls (6.8; no LSM but
#   capability); PROCMAP_QUERY on /proc/<pid>/maps (6.11); the *xattrat
#   calls and PIDFD_GET_INFO's pids and ids (6.13; its cgroup id is the
#   host's).
# Not kept yet: the pidfd ioctls PIDFD_GET_*_NAMESPACE (6.11) reach the
# host's pidfd as they are (the host's namespace files); nsfs's NS_GET_MNTNS_ID (6.11) and NS_MNT_GET_* (6.12)
# are ENOTTY; statmount knows one mount namespace and private mounts only.
# tests/unit/test_release.py holds the calls to the release.
LINUX_RELEASE = "6.13.0-lxsub"
# The last syscall number LINUX_RELEASE introduced (removexattrat, 6.13).
LINUX_RELEASE_LAST_SYSCALL = 466
