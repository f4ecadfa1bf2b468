"""On a failing test, the agents' log tails of every live CLI cluster go into its report.

The clusters are shared per module and cleaned up after it, and CI keeps no test directory:
without this, a failure on a loaded CI machine leaves only the assertion, not what the agents
did (a switchover race was found only by a local repeat). A test module with other servers
to tell of defines ``failure_story() -> str``; its text goes into the report the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_fixtures import LIVE


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for cluster in sorted(LIVE, key=lambda c: str(c.root)):
            report.sections.append((f"agent logs of {cluster.root}", cluster.log_tails()))
        story = getattr(getattr(item, "module", None), "failure_story", None)
        if callable(story):
            try:
                text = str(story())
            except Exception as err:  # the story must never hide the failure itself
                text = f"(no story: {err!r})"
            report.sections.append((f"what {item.module.__name__} saw", text))
