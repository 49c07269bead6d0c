"""``cluster forks promote`` on DigitalOcean: a fork (a cluster tagged ``studyhub-fork``) becomes
the profile's primary by switching the profile's endpoint and cluster id to it, in the profile
file studyhub owns (``profile_file``). Nothing is sent to DigitalOcean but the read of the
forks; the old cluster is left as it is. ``DigitalOceanBackend`` inherits this."""

from __future__ import annotations

import time
from typing import Any

from studyhub.ops.cluster.common import fork_profile, reapply_erasures_on_fork
from studyhub.ops.cluster.digitalocean_api import FORK_TAG, DigitalOceanApi
from studyhub.ops.cluster.profile_file import (
    plan_profile_file,
    profile_file,
    promote_changes,
    promote_warnings,
    update_profile_file,
)
from studyhub.ops.cluster.types import (
    ApiRequest,
    ChangeResult,
    ClusterOpError,
    Fork,
    Plan,
    Progress,
    _noop,
    iso,
)


class DigitalOceanPromote(DigitalOceanApi):
    def forks(self) -> list[Fork]:  # pragma: no cover - DigitalOceanBackend's
        raise NotImplementedError

    def fork_promote_plan(self, name: str, *, offline: bool = False) -> Plan:
        """Make a fork the profile's primary: the profile's endpoint (host, port, cluster id)
        switched to the fork's in the profile file studyhub owns (profiles.d). Nothing is sent
        to DigitalOcean but the read of the forks; the old cluster is left as it is."""
        requests = [ApiRequest("GET", f"/v2/databases?tag_name={FORK_TAG}")]
        path = profile_file(self.profile.name)
        if offline:
            return Plan("digitalocean", "fork promote", self.cluster_id,
                        [f"check that fork {name} (tagged {FORK_TAG}) is online",
                         f"erase again in {name} everyone in the erasure ledger of "
                         f"{self.profile.database} (erasures since the fork was made)",
                         f"switch profile {self.profile.name} to {name}: host, port and "
                         f"do_cluster_id <of {name}> written to {path}",
                         f"cluster {self.cluster_id} is not changed (remove it when done)"],
                        params={"name": name}, requests=requests, offline=True)
        forks = self.forks()
        match = [f for f in forks if f.name == name]
        if not match:
            known = ", ".join(f.name for f in forks) or "none"
            raise ClusterOpError(f"no fork named {name!r} among the clusters tagged {FORK_TAG} "
                                 f"(forks: {known})")
        fork = match[0]
        if fork.id == self.cluster_id:
            raise ClusterOpError(f"fork {name} already is profile {self.profile.name}'s cluster")
        if fork.status != "online":
            raise ClusterOpError(f"fork {name} is still {fork.status} (recovering); promote it "
                                 f"once it is online (studyhub cluster forks list)")
        if not fork.host or not fork.port:
            raise ClusterOpError(f"DigitalOcean gives no host and port for fork {name} yet")
        changes = promote_changes(fork.host, fork.port, fork.id)
        diff = plan_profile_file(self.profile.name, changes)
        p = self.profile
        summary = [
            f"profile {p.name}: primary {p.host}:{p.port} (cluster {self.cluster_id}) → fork "
            f"{name} {fork.host}:{fork.port} (cluster {fork.id}, as of {iso(fork.target_time)})",
            f"first erase again in {name} everyone in the erasure ledger of {p.database} "
            f"(people erased since the fork was made)",
            f"then write {path} (merged over studyhub.toml):",
            *[f"  {line}" for line in diff.splitlines() if line[:1] in "+-"
              and not line.startswith(("+++", "---"))],
            f"cluster {self.cluster_id} is not changed: it keeps running (and billing) until "
            f"you destroy it",
        ]
        return Plan("digitalocean", "fork promote", self.cluster_id, summary,
                    params={"name": name, "id": fork.id, "host": fork.host, "port": fork.port,
                            "changes": changes, "from_host": p.host, "from_port": p.port},
                    requests=requests, warnings=promote_warnings(p))

    def fork_promote(self, plan: Plan, *, progress: Progress = _noop, **_: Any) -> ChangeResult:
        assert not plan.offline
        started = time.monotonic()
        prm = plan.params
        target = fork_profile(self.profile, f"fork {prm['name']}", prm["host"], prm["port"])
        progress("re-applying the erasure ledger to the fork")
        erasures = reapply_erasures_on_fork(self.profile, target, prm["name"])
        path = update_profile_file(self.profile.name, prm["changes"])
        return ChangeResult("digitalocean", "fork promote", self.cluster_id, prm["name"],
                            "promoted", round(time.monotonic() - started, 3),
                            details={"name": prm["name"], "from_cluster": self.cluster_id,
                                     "to_cluster": prm["id"],
                                     "endpoint": f"{prm['host']}:{prm['port']}",
                                     "profile_file": str(path),
                                     "erasures_reapplied": erasures.reapplied})
