"""Features kept out of the core: what a host-side module imports.

Each check runs in a fresh interpreter (the test process has the kernel
loaded already) and lists the lxsub modules the import pulled in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _loaded_after(code: str) -> list[str]:
    probe = (f"import sys; sys.path.insert(0, {str(SRC)!r}); {code}; import json; "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lxsub'))))")
    cp = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout.splitlines()[-1])


def test_lx_path_translates_without_the_kernel(tmp_path):
    """`lx --path` (cli/pathcmd.translate) needs only lxsub/hostpath.py."""
    (tmp_path / "etc").mkdir()
    loaded = _loaded_after("from lxsub.cli import pathcmd; "
                           f"assert pathcmd.translate({str(tmp_path)!r}, 'u', '/usr/bin') "
                           "== '/mnt/host/usr/bin'")
    assert "lxsub.hostpath" in loaded
    assert not [m for m in loaded if m.startswith(("lxsub.kernel", "lxsub.manager"))], loaded


def test_session_and_lxbus_do_not_import_the_manager():
    """kernel/session.py takes PASSED_ENV and the wire helpers from
    lxsub/wire.py, not manager/protocol.py. (lxbus/ports.py's former lazy
    import of manager.client: test_lxbus.py::test_no_server_says_whether_the_instance_runs.)"""
    loaded = _loaded_after("import lxsub.kernel.session, lxsub.lxbus.ports")
    assert "lxsub.wire" in loaded
    upward = [m for m in loaded if m.startswith(("lxsub.manager", "lxsub.cli"))]
    assert upward == [], upward
