"""Request shaping for remote providers: budgets per request, and client-side rate limits."""

from __future__ import annotations

from syncer.providers.limits import TokenBucket, plan_requests


def test_requests_respect_input_and_token_budgets() -> None:
    counts = [10] * 25
    plan = plan_requests(counts, max_inputs=8, max_tokens=50)
    assert [len(p) for p in plan] == [5, 5, 5, 5, 5]  # the token budget binds first
    assert sorted(i for p in plan for i in p) == list(range(25))
    assert [len(p) for p in plan_requests(counts, max_inputs=4, max_tokens=1000)] == [4] * 6 + [1]


def test_requests_spread_over_the_concurrency() -> None:
    assert [len(p) for p in plan_requests([1] * 10, max_inputs=2048, max_tokens=10_000, parallel=4)] == [3, 3, 3, 1]
    assert [len(p) for p in plan_requests([1] * 3, max_inputs=2048, max_tokens=10_000, parallel=8)] == [1, 1, 1]


def test_an_input_larger_than_the_budget_goes_alone() -> None:
    assert plan_requests([5, 500, 5], max_inputs=10, max_tokens=100) == [[0], [1], [2]]


def test_token_bucket_refills_over_a_minute() -> None:
    now = [0.0]
    bucket = TokenBucket(per_minute=600, clock=lambda: now[0])  # 10 per second
    assert bucket.wait_time(600) == 0
    bucket.spend(600)
    assert bucket.wait_time(50) == 5.0
    now[0] = 5.0
    assert bucket.wait_time(50) == 0
    assert bucket.wait_time(10_000) > 0  # larger than the bucket: waits for a full bucket, then goes
