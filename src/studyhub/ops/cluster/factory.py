"""Which backend serves a profile (``backend_for``), and a running fork as a profile to
connect to (``fork_target``).
"""

from __future__ import annotations

from studyhub.errors import ConfigError
from studyhub.ops.cluster.common import fork_profile
from studyhub.ops.cluster.local import LocalBackend
from studyhub.ops.cluster.types import ClusterBackend, ClusterOpError
from studyhub.profiles import Profile


def backend_for(profile: Profile) -> ClusterBackend:
    """The local cluster for ``local``; DigitalOcean's API for a profile with do_cluster_id."""
    if profile.is_local:
        return LocalBackend(profile)
    if not profile.do_cluster_id:
        env = f"STUDYHUB_{profile.name.upper()}_DO_CLUSTER_ID"
        raise ConfigError(
            f"profile {profile.name} has no DigitalOcean cluster id; set {env} or "
            f"[{profile.name}] do_cluster_id = \"…\" in studyhub.toml"
        )
    # Imported here on purpose, not for a loop: the DigitalOcean backend pulls in azure-core
    # (~0.15 s), which every other command (and the local profile) should not pay for.
    from studyhub.ops.cluster.digitalocean import DigitalOceanBackend

    return DigitalOceanBackend(profile)


def fork_target(profile: Profile, name: str) -> Profile:
    """A running fork of the profile's cluster (``cluster forks list``), as a profile to
    connect to with the source's roles."""
    forks = backend_for(profile).forks()
    match = [f for f in forks if f.name == name]
    if not match:
        known = ", ".join(f.name for f in forks) or "none"
        raise ClusterOpError(f"no fork named {name!r} (forks: {known})")
    fork = match[0]
    if not fork.port or fork.status not in ("running", "online"):
        raise ClusterOpError(f"fork {name} is {fork.status}; it must be running "
                             f"(local: studyhub cluster forks start {name})")
    return fork_profile(profile, f"fork {name}", fork.host, fork.port)
