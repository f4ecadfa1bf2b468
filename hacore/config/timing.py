"""The ``timing`` section of ``node.yaml``: the leader lease's timing and its named profiles.

Kept apart from the rest of the node configuration because the numbers hang together: the
self-fencing rule (DESIGN §3, safety rule 1) ties the four values to each other, and a
profile's values to the election timeouts a managed store must run with
(:data:`PROFILE_STORE_SETTINGS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from hacore.config.check import Section


@attrs.frozen
class TimingSettings:
    """Leader lease timing, in seconds (see DESIGN §3, safety rule 1).

    ttl is 6 s, not 5: at 5 an etcd election that takes the full two election timeouts can
    end after the active's last renewal, and losing the store's leader fenced a healthy active
    in 2 runs of 10 (docs/etcd.md, "Losing a member, the raft leader included").

    ``profile`` names the set the other values were taken from (:data:`TIMING_PROFILES`);
    keys given beside it win.
    """

    ttl: float = 6.0
    loop_wait: float = 1.0
    retry_timeout: float = 1.0
    safety_margin: float = 1.5
    profile: str = "default"

    @property
    def fence_after(self) -> float:
        """Seconds without a successful renew after which the active fences itself."""
        return self.ttl - self.safety_margin


#: ``timing.profile``: named, consistent timing sets. ``fast`` gives a dead active's lease 3 s
#: instead of 6. Not 2: etcd counts whole seconds, and a new active must renew within
#: ``ttl - safety_margin`` of its campaign, its promotion included, which took up to 1.3 s on a
#: loaded two-core machine (at ttl 2 it fenced itself after each promotion). Its
#: ``safety_margin`` stays above the 1 s by which the fault tests allow a fence to lag its
#: deadline on such a machine. Its last renewal before the self-fencing deadline starts 1.15 s
#: after the previous one (``ttl - safety_margin - retry_timeout - 0.25``), and a cut can come
#: one ``loop_wait`` after that one: a store that loses its raft leader must elect another
#: within 0.65 s, so a managed etcd runs with the election timeouts of
#: :data:`PROFILE_STORE_SETTINGS` (docs/configuration.md, "Timing profiles"; docs/etcd.md).
TIMING_PROFILES: Mapping[str, TimingSettings] = MappingProxyType(
    {
        "default": TimingSettings(),
        "fast": TimingSettings(
            ttl=3.0, loop_wait=0.5, retry_timeout=0.5, safety_margin=1.1, profile="fast"
        ),
    }
)
#: per profile and store backend: the defaults of a *managed* store server's own keys that the
#: profile's timing needs (keys given in the consensus section win). A managed ZooKeeper's
#: tick at ``fast`` is 100 ms, not 250: its followers give up on a silent leader after
#: ``syncLimit`` (20) ticks, and the new leader restarts every session's timer, so when the
#: store's leader dies with the active's host the dead active's lease outlives it by that wait,
#: the election and a whole ttl: 5 + 0.6 + 3 s at 250 ms, past the 2 x ttl a takeover is
#: promised in; 2 + 0.6 + 3 s at 100 ms. Sessions also expire on tick boundaries: a crash's
#: first write came 0.1-0.2 s sooner (docs/zookeeper.md, "Timing").
PROFILE_STORE_SETTINGS: Mapping[str, Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "fast": {
            "etcd": {"heartbeat_interval": 50, "election_timeout": 300},
            "zookeeper": {"tick_time_ms": 100},
        }
    }
)


def read_timing(sec: Section) -> TimingSettings:
    """The ``timing`` section: a profile's values under the keys given, and the safety rule."""
    sec.reject_unknown()
    seconds = "a number of seconds > 0"
    profile = sec.choice("profile", "default", tuple(TIMING_PROFILES))
    default = TIMING_PROFILES.get(profile, TimingSettings())
    timing = TimingSettings(
        ttl=sec.number("ttl", default.ttl, what=seconds),
        loop_wait=sec.number("loop_wait", default.loop_wait, what=seconds),
        retry_timeout=sec.number("retry_timeout", default.retry_timeout, what=seconds),
        safety_margin=sec.number("safety_margin", default.safety_margin, what=seconds),
        profile=profile,
    )
    needed = timing.loop_wait + 2 * timing.retry_timeout + timing.safety_margin
    # With a bad value read as its default, the sum would be about numbers nobody wrote.
    if sec.clean and not needed < timing.ttl:
        sec.problem(
            "timing is unsafe: loop_wait + 2 * retry_timeout + safety_margin must be less than "
            f"ttl, so the active fences itself before a standby can take over "
            f"({timing.loop_wait:g} + 2 * {timing.retry_timeout:g} + {timing.safety_margin:g} "
            f"= {needed:g}, ttl = {timing.ttl:g}); raise timing.ttl above {needed:g} "
            "or lower the others"
        )
    return timing


def timing_mapping(timing: TimingSettings) -> dict[str, Any]:
    """``timing`` as plain data; ``profile`` only when not the default, so a record or a
    ``node.yaml`` written by this version stays readable by an agent that predates profiles
    (a rolling upgrade) unless a profile is in use."""
    data = attrs.asdict(timing)
    if timing.profile == "default":
        del data["profile"]
    return data


def managed_store_settings(
    given: Mapping[str, Any], timing: TimingSettings, backend: str, managed: bool
) -> dict[str, Any]:
    """A managed store server's settings, with the timing profile's defaults under them."""
    if not managed:
        return dict(given)
    defaults = PROFILE_STORE_SETTINGS.get(timing.profile, {}).get(backend, {})
    return {**defaults, **given}
