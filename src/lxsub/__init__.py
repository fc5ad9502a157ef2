"""lxsub: a Linux subsystem in Python.

Layout (see docs/ARCHITECTURE.md):
  cli/       the `lx` command
  distro/    importing and exporting root file systems
  platform/  pico processes: seccomp, ptrace, user-notify, tracee memory
  kernel/    the provider: tasks, credentials, signals, VFS, syscall table
"""

__version__ = "0.1.0"

# The release string `uname -r` reports inside an instance.
LINUX_RELEASE = "6.1.0-lxsub"
