"""Developer tools of lxsub (run from the repository root: python3 -m tools.NAME)."""
