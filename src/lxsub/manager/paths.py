"""The manager's names for the runtime paths, kept where `lxsub.runtime` has them.

The runtime directory (sockets, locks) is chosen in `lxsub/runtime.py`,
below the kernel and LxBus, which need it too and do not import manager/.
"""

from __future__ import annotations

from lxsub.runtime import (  # noqa: F401  (re-exported for the manager, tools and tests)
    SUN_PATH_MAX, candidates as runtime_dir_candidates, instance_socket, instances_dir,
    manager_lock, manager_socket, private_dir, runtime_dir, start_lock,
)
