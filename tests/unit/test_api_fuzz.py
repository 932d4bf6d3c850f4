"""Fuzz the API from its own OpenAPI document (schemathesis): no 5xx, whatever is sent.

Runs in process against the real app on embedded defaults (SQLite, filesystem queue) with an admin
key. Each operation's generated cases are driven by Hypothesis directly (the schemathesis pytest
plugin does not load under pytest 9); the test asserts at least 1,000 requests in all.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 200


def _fuzz(operation, headers: dict[str, str], sent: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    """Send one operation's generated cases, counting them in ``sent`` under its label."""
    label = operation.label

    @given(case=operation.as_strategy())
    @hsettings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case) -> None:  # type: ignore[no-untyped-def]
        sent[label] = sent.get(label, 0) + 1
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    run()


def test_no_server_error_in_1000_generated_requests(app, client) -> None:  # type: ignore[no-untyped-def]
    headers = {"X-API-Key": client.environ_base["HTTP_X_API_KEY"]}
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, headers=headers)
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        _fuzz(result.ok(), headers, sent)
    assert len(sent) >= 7, sent  # every operation that takes input
    assert sum(sent.values()) >= 1000, sent
