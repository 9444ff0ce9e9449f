"""Fuzz the live service from its own OpenAPI spec (schemathesis): whatever the generated
request, valid (positive) or not (negative), the answer is never a 5xx, and every error is the
typed JSON body ``{"error": {"code", "message", ...}}``."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.redis]

EXAMPLES = {"positive": 20, "negative": 25}


@pytest.fixture(scope="module")
def api_schema(service, ray_cluster):
    schema = schemathesis.openapi.from_url(f"{ray_cluster}/openapi.json")
    return [r.ok() for r in schema.get_all_operations()]


def test_spec_lists_every_route(api_schema):
    labels = {op.label for op in api_schema}
    assert {"GET /healthz", "GET /readyz", "GET /metrics", "GET /v1/methods", "POST /v1/compress",
            "POST /v1/retrieve", "POST /v1/answer"} <= labels, labels


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_5xx_from_generated_requests(api_schema, mode):
    generation_mode = schemathesis.GenerationMode(mode)
    seen: dict[int, int] = {}
    def make_check(op):
        @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=generation_mode))
        def check(case):
            response = case.call(timeout=120)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (op.label, case.body, case.query, response.text[:500])
            if response.status_code >= 400:
                err = response.json()["error"]
                assert err["code"] and err["message"], response.text[:500]

        return check

    for op in api_schema:
        if mode == "negative" and op.method.upper() != "POST":
            continue  # a GET without parameters has no invalid form
        make_check(op)()
    assert sum(seen.values()) > 50, seen
    if mode == "negative":
        assert any(400 <= s < 500 for s in seen), seen  # invalid input really was sent and refused
