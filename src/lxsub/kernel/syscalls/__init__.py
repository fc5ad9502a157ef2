"""Thin ABI handlers, grouped by the header their syscalls come from.

Each handler decodes its arguments from a `Call`, asks kernel/ or vfs/ to do
the work and returns the result (see kernel/call.py for the protocol).
kernel/table.py says which handler serves which syscall number.
"""
