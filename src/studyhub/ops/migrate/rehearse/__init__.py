"""Rehearsing pending migrations on a fork of the target (placeholder; helper R's version of
this package's ``__init__`` replaces it at merge). ``measure`` is the measurement engine."""
