"""Fuzzers for lxsub (issue 18): `python3 -m tools.fuzz requests|syscalls ...`."""
