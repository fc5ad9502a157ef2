"""lxsub: a Linux subsystem in Python.

Layout (see docs/ARCHITECTURE.md):
  cli/       the `lx` command
  distro/    importing and exporting root file systems
  platform/  pico processes: seccomp, ptrace, user-notify, tracee memory
  kernel/    the provider: tasks, credentials, signals, VFS, syscall table
"""

__version__ = "0.1.0"

# The release string `uname -r` reports inside an instance: the newest Linux
# whose new system calls lxsub has (programs and test suites check the
# release before they use what it brought). 6.2-6.7 added cachestat, fchmodat2,
# map_shadow_stack and futex_wake/wait/requeue (all implemented); 6.8 adds
# statmount, listmount (denied) and the lsm_* calls (not implemented), so
# lxsub is not 6.8 (tests/unit/test_syscall_table.py holds this).
LINUX_RELEASE = "6.7.0-lxsub"
# The last syscall number LINUX_RELEASE introduced (futex_requeue, 6.7).
LINUX_RELEASE_LAST_SYSCALL = 456
