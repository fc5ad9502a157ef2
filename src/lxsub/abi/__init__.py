"""The Linux ABI as numbers: one home for the constants of Linux's uapi
headers (as gVisor's pkg/abi/linux), one module per header.

The bottom floor: it imports nothing of lxsub, so platform/, kernel/, the
CLI and the manager can all take their constants from here instead of
writing them again.
"""
