"""Quotas and budgets as a tenant meets them: refusals name the limit and when to retry, refills and
calendar resets let requests through again, and concurrent requests never overrun a limit. Every test
runs on the in-process store and on a real Redis server; the last ones share Redis between two
Limiters, as two server replicas would."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
import redis

from inferline.config import (
    ApiKeyConfig,
    BudgetConfig,
    OrganisationConfig,
    QuotaConfig,
    ServerConfig,
    TeamConfig,
    TenantConfig,
)
from inferline.errors import LimitExceededError
from inferline.router.limit_store import DEFAULT_LEASE_S
from inferline.router.limits import PERIOD_GRACE_S, Admission, Limiter, Principal

ALPHA = Principal("alpha")


class FakeClock:
    def __init__(self, when: datetime = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(
    quotas: QuotaConfig | None = None, budget: BudgetConfig | None = None, **fields: object
) -> ServerConfig:
    tenant = TenantConfig(name="alpha", api_keys=["sk-alpha"], quotas=quotas or QuotaConfig(), budget=budget)
    return ServerConfig.model_validate({"tenants": [tenant], **fields})


def day_budget(usd: float) -> BudgetConfig:
    return BudgetConfig(limit_usd=usd, period="day")


MakeLimiter = Callable[[ServerConfig, FakeClock], Limiter]


@pytest.fixture
def empty_redis(redis_url: str) -> str:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return redis_url


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> MakeLimiter:
    if request.param == "memory":
        return lambda cfg, clock: Limiter.from_config(cfg, clock)
    url = request.getfixturevalue("empty_redis")
    return lambda cfg, clock: Limiter.from_config(cfg.model_copy(update={"redis_url": url}), clock)


@asynccontextmanager
async def opened(limiter: Limiter) -> AsyncIterator[Limiter]:
    try:
        yield limiter
    finally:
        await limiter.close()


async def refused(call: object) -> LimitExceededError:
    with pytest.raises(LimitExceededError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# -- quotas -------------------------------------------------------------------------------------------


def test_requests_per_minute_runs_out_then_refills(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()

    async def main() -> None:
        async with opened(make_limiter(config(QuotaConfig(requests_per_minute=60)), clock)) as limiter:
            for _ in range(60):
                await limiter.acquire(ALPHA)
            error = await refused(limiter.acquire(ALPHA))
            assert (error.scope, error.limit) == ("tenant:alpha", "requests_per_minute")
            assert error.retry_after_s == pytest.approx(1.0)
            assert "tenant 'alpha'" in str(error)
            assert "requests_per_minute limit of 60" in str(error)
            assert "retry in 1.0 s" in str(error)
            clock.advance(0.6)
            assert (await refused(limiter.acquire(ALPHA))).retry_after_s == pytest.approx(0.4)
            clock.advance(0.4)  # one request's worth has refilled: exactly one more
            await limiter.acquire(ALPHA)
            await refused(limiter.acquire(ALPHA))
            clock.advance(60)  # a full bucket, and never more than its capacity
            for _ in range(60):
                await limiter.acquire(ALPHA)
            await refused(limiter.acquire(ALPHA))

    asyncio.run(main())


def test_tokens_per_minute_debt_blocks_until_refilled(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()

    async def main() -> None:
        async with opened(make_limiter(config(QuotaConfig(tokens_per_minute=600)), clock)) as limiter:
            admission = await limiter.acquire(ALPHA)
            await limiter.finish(admission, tokens=1200, cost_usd=0)  # 600 tokens in debt
            error = await refused(limiter.acquire(ALPHA))
            assert (error.scope, error.limit) == ("tenant:alpha", "tokens_per_minute")
            assert error.retry_after_s == pytest.approx(60.1)  # back to one whole token at 10 tokens/s
            assert "tokens_per_minute limit of 600" in str(error)
            assert "600 tokens in debt" in str(error)
            clock.advance(60)
            assert (await refused(limiter.acquire(ALPHA))).retry_after_s == pytest.approx(0.1)
            clock.advance(0.1)
            second = await limiter.acquire(ALPHA)
            third = await limiter.acquire(ALPHA)  # tokens are debited after the request, not before
            await limiter.finish(second, tokens=0, cost_usd=0)
            await limiter.finish(third, tokens=0, cost_usd=0)
            snapshot = await limiter.snapshot()
            assert snapshot["tenant:alpha"]["quotas"]["tokens_per_minute"]["available"] == pytest.approx(1)

    asyncio.run(main())


async def send_together(
    limiters: list[Limiter], num_requests: int, *, hold_until_all_answered: bool
) -> tuple[int, list[LimitExceededError]]:
    """Send requests at once, spread over the limiters; return the most that were ever in flight together,
    and the refusals. Admitted requests stay in flight until every request has had its answer, or for a
    millisecond."""
    in_flight, most_in_flight, num_answered = 0, 0, 0
    refusals: list[LimitExceededError] = []
    all_answered = asyncio.Event()

    async def request(limiter: Limiter) -> None:
        nonlocal in_flight, most_in_flight, num_answered
        admission = None
        try:
            admission = await limiter.acquire(ALPHA)
        except LimitExceededError as error:
            refusals.append(error)
        num_answered += 1
        if num_answered == num_requests:
            all_answered.set()
        if admission is None:
            return
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await (all_answered.wait() if hold_until_all_answered else asyncio.sleep(0.001))
        in_flight -= 1
        await limiter.finish(admission, tokens=5, cost_usd=0)

    await asyncio.gather(*(request(limiters[i % len(limiters)]) for i in range(num_requests)))
    return most_in_flight, refusals


def test_concurrent_requests_never_exceed_max_concurrent(make_limiter: MakeLimiter) -> None:
    async def main() -> None:
        async with opened(make_limiter(config(QuotaConfig(max_concurrent=3)), FakeClock())) as limiter:
            for _ in range(2):  # the second round finds the first round's slots freed
                most_in_flight, refusals = await send_together([limiter], 50, hold_until_all_answered=True)
                assert (most_in_flight, len(refusals)) == (3, 47)
                assert {(e.scope, e.limit) for e in refusals} == {("tenant:alpha", "max_concurrent")}
                assert all(e.retry_after_s > 0 for e in refusals)
                assert "max_concurrent limit of 3" in str(refusals[0])
            # Requests finishing while others arrive.
            most_in_flight, _ = await send_together([limiter], 50, hold_until_all_answered=False)
            assert 1 <= most_in_flight <= 3
            snapshot = await limiter.snapshot()
            assert snapshot["tenant:alpha"]["quotas"]["max_concurrent"] == {"limit": 3, "in_flight": 0}

    asyncio.run(main())


def test_a_refused_request_takes_nothing(make_limiter: MakeLimiter) -> None:
    quotas = QuotaConfig(requests_per_minute=3, max_concurrent=1)

    async def main() -> None:
        async with opened(make_limiter(config(quotas), FakeClock())) as limiter:
            first = await limiter.acquire(ALPHA)
            for _ in range(5):  # refused by max_concurrent: the request tokens are not spent
                assert (await refused(limiter.acquire(ALPHA))).limit == "max_concurrent"
            await limiter.finish(first, tokens=0, cost_usd=0)
            for _ in range(2):
                await limiter.finish(await limiter.acquire(ALPHA), tokens=0, cost_usd=0)
            assert (await refused(limiter.acquire(ALPHA))).limit == "requests_per_minute"

    asyncio.run(main())


def test_when_several_quotas_refuse_the_error_names_the_last_to_clear(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()

    async def main() -> None:
        quotas = QuotaConfig(requests_per_minute=1, tokens_per_minute=60)
        async with opened(make_limiter(config(quotas), clock)) as limiter:
            await limiter.finish(await limiter.acquire(ALPHA), tokens=90, cost_usd=0)
            error = await refused(limiter.acquire(ALPHA))  # a request in 60 s, a token in 31 s
            assert (error.limit, error.retry_after_s) == ("requests_per_minute", pytest.approx(60))
            clock.advance(60)  # the token bucket is back to 30
            await limiter.finish(await limiter.acquire(ALPHA), tokens=90, cost_usd=0)
            error = await refused(limiter.acquire(ALPHA))  # a request in 60 s, a token in 61 s
            assert (error.limit, error.retry_after_s) == ("tokens_per_minute", pytest.approx(61))

    asyncio.run(main())


def test_finish_twice_counts_once(make_limiter: MakeLimiter) -> None:
    quotas = QuotaConfig(max_concurrent=2, tokens_per_minute=1000)

    async def main() -> None:
        async with opened(make_limiter(config(quotas, day_budget(10)), FakeClock())) as limiter:
            first = await limiter.acquire(ALPHA)
            second = await limiter.acquire(ALPHA)
            await limiter.hold_budget(first, 1.0)
            for _ in range(3):
                await limiter.finish(first, tokens=100, cost_usd=0.25)
            await limiter.acquire(ALPHA)
            assert (await refused(limiter.acquire(ALPHA))).limit == "max_concurrent"
            await limiter.hold_budget(second, 2.0)
            await limiter.finish(second, tokens=0, cost_usd=0)  # a failed request: its hold is dropped
            snapshot = await limiter.snapshot()
            assert snapshot["tenant:alpha"]["quotas"]["tokens_per_minute"]["available"] == pytest.approx(900)
            budget = snapshot["tenant:alpha"]["budget"]
            assert (budget["spent_usd"], budget["held_usd"]) == (0.25, 0)
            with pytest.raises(ValueError, match="finished"):
                await limiter.hold_budget(first, 1.0)

    asyncio.run(main())


# -- budgets ------------------------------------------------------------------------------------------


def test_each_level_of_the_budget_hierarchy_refuses_in_turn(make_limiter: MakeLimiter) -> None:
    key = ApiKeyConfig(key="sk-ci", name="ci", budget=BudgetConfig(limit_usd=1, period="total"))
    cfg = ServerConfig(
        tenants=[
            TenantConfig(name="alpha", api_keys=[key], team="ml", budget=day_budget(2)),
            TenantConfig(name="beta", api_keys=["sk-beta"], team="ml"),
            TenantConfig(name="gamma", api_keys=["sk-gamma"], team="web"),
        ],
        teams=[
            TeamConfig(name="ml", organisation="acme", budget=day_budget(3)),
            TeamConfig(name="web", organisation="acme"),
        ],
        organisations=[OrganisationConfig(name="acme", budget=BudgetConfig(limit_usd=4, period="month"))],
    )
    principals = [Principal.from_config(cfg, t, k) for t, k in [("alpha", "ci"), ("alpha", None)]]
    principals += [Principal.from_config(cfg, "beta"), Principal.from_config(cfg, "gamma")]
    assert principals[0] == Principal("alpha", "ci", "ml", "acme")
    assert principals[3] == Principal("gamma", None, "web", "acme")
    expected = [
        ("key:ci", "key 'ci' has spent $1.00 of its $1.00 total budget"),
        ("tenant:alpha", "tenant 'alpha' has spent $2.00 of its $2.00 daily budget"),
        ("team:ml", "team 'ml' has spent $3.00 of its $3.00 daily budget"),
        ("organisation:acme", "organisation 'acme' has spent $4.00 of its $4.00 monthly budget"),
    ]

    async def main() -> None:
        async with opened(make_limiter(cfg, FakeClock())) as limiter:
            for principal, (scope, message) in zip(principals, expected, strict=True):
                admission = await limiter.acquire(principal)
                await limiter.hold_budget(admission, 1.0)
                await limiter.finish(admission, tokens=10, cost_usd=1.0)
                error = await refused(limiter.hold_budget(await limiter.acquire(principal), 0.01))
                assert (error.scope, error.limit) == (scope, "budget")
                assert str(error).startswith(message)
                assert "this request needs up to $0.01" in str(error)
            snapshot = await limiter.snapshot()
            assert [snapshot[scope]["budget"]["spent_usd"] for scope, _ in expected] == [1, 2, 3, 4]

    asyncio.run(main())


def test_holds_exactly_reaching_the_limit_pass_and_nothing_more(make_limiter: MakeLimiter) -> None:
    async def hold(limiter: Limiter, amount_usd: float) -> Admission | None:
        admission = await limiter.acquire(ALPHA)
        try:
            await limiter.hold_budget(admission, amount_usd)
        except LimitExceededError:
            await limiter.finish(admission, tokens=0, cost_usd=0)
            return None
        return admission

    async def main() -> None:
        async with opened(make_limiter(config(budget=day_budget(0.3)), FakeClock())) as limiter:
            # 0.1 + 0.2 > 0.3 in floats; in money it is exactly the limit.
            held = [await hold(limiter, 0.1), await hold(limiter, 0.2)]
            assert None not in held
            error = await refused(limiter.hold_budget(await limiter.acquire(ALPHA), 0.000001))
            assert "$0.00 of its $0.30 daily budget ($0.30 more is held by requests in flight)" in str(error)
            for admission in held:
                assert admission is not None
                await limiter.finish(admission, tokens=0, cost_usd=0)

        async with opened(make_limiter(config(budget=day_budget(1.0)), FakeClock())) as limiter:
            admissions = await asyncio.gather(*(hold(limiter, 0.07) for _ in range(50)))
            granted = [a for a in admissions if a is not None]
            assert len(granted) == 14  # 14 × $0.07 = $0.98; a 15th would pass $1.00
            budget = (await limiter.snapshot())["tenant:alpha"]["budget"]
            assert budget["held_usd"] == pytest.approx(0.98)
            await asyncio.gather(*(limiter.finish(a, tokens=1, cost_usd=0.07) for a in granted))
            assert await hold(limiter, 0.02) is not None  # exactly the remaining $0.02
            assert await hold(limiter, 0.000001) is None
            budget = (await limiter.snapshot())["tenant:alpha"]["budget"]
            assert budget["spent_usd"] + budget["held_usd"] == pytest.approx(1.0)

        next_day = FakeClock(datetime(2025, 1, 16, tzinfo=UTC))  # the store (Redis) is the same as above
        async with opened(make_limiter(config(budget=day_budget(2.01)), next_day)) as limiter:
            # 2.01 * 1e6 is 2009999.9999999998: money is rounded to the micro-dollar, never truncated.
            assert await hold(limiter, 2.0) is not None
            assert await hold(limiter, 0.01) is not None
            assert await hold(limiter, 0.000001) is None

    asyncio.run(main())


def test_hold_release_and_hold_again(make_limiter: MakeLimiter) -> None:
    async def main() -> None:
        async with opened(make_limiter(config(budget=day_budget(1.0)), FakeClock())) as limiter:
            first, second = await limiter.acquire(ALPHA), await limiter.acquire(ALPHA)
            await limiter.hold_budget(first, 0.8)
            with pytest.raises(ValueError, match="release_budget first"):
                await limiter.hold_budget(first, 0.1)
            await refused(limiter.hold_budget(second, 0.3))
            await limiter.release_budget(first)  # e.g. the router falls back to another deployment
            await limiter.release_budget(first)  # nothing held: nothing happens
            await limiter.hold_budget(second, 0.3)
            await refused(limiter.hold_budget(first, 0.8))
            await limiter.hold_budget(first, 0.7)
            await limiter.finish(first, tokens=0, cost_usd=0.1)
            await limiter.finish(second, tokens=0, cost_usd=0.2)
            budget = (await limiter.snapshot())["tenant:alpha"]["budget"]
            assert (budget["spent_usd"], budget["held_usd"]) == (pytest.approx(0.3), 0)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("period", "start", "seconds_to_reset"),
    [
        ("minute", datetime(2025, 1, 15, 12, 0, 45, tzinfo=UTC), 15),
        ("day", datetime(2025, 1, 15, 23, 59, 0, tzinfo=UTC), 60),
        ("month", datetime(2024, 2, 29, 23, 0, 0, tzinfo=UTC), 3600),  # a leap day
        ("month", datetime(2024, 12, 31, 23, 30, 0, tzinfo=UTC), 1800),  # into the next year
    ],
)
def test_budget_resets_at_the_calendar_boundary(
    make_limiter: MakeLimiter, period: str, start: datetime, seconds_to_reset: float
) -> None:
    clock = FakeClock(start)
    budget = BudgetConfig.model_validate({"limit_usd": 5, "period": period})

    async def main() -> None:
        async with opened(make_limiter(config(budget=budget), clock)) as limiter:
            admission = await limiter.acquire(ALPHA)
            await limiter.hold_budget(admission, 5)
            await limiter.finish(admission, tokens=0, cost_usd=5)
            error = await refused(limiter.hold_budget(await limiter.acquire(ALPHA), 1))
            assert error.retry_after_s == pytest.approx(seconds_to_reset)
            clock.advance(seconds_to_reset - 0.001)
            await refused(limiter.hold_budget(await limiter.acquire(ALPHA), 1))
            clock.advance(0.001)
            await limiter.hold_budget(await limiter.acquire(ALPHA), 5)
            assert (await limiter.snapshot())["tenant:alpha"]["budget"]["held_usd"] == 5

    asyncio.run(main())


def test_a_total_budget_never_resets(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()

    async def main() -> None:
        cfg = config(budget=BudgetConfig(limit_usd=1, period="total"))
        async with opened(make_limiter(cfg, clock)) as limiter:
            await limiter.finish(await limiter.acquire(ALPHA), tokens=0, cost_usd=1)
            clock.advance(400 * 86_400)
            error = await refused(limiter.hold_budget(await limiter.acquire(ALPHA), 0.5))
            assert error.retry_after_s == 86_400
            assert "never resets" in str(error)
            snapshot = await limiter.snapshot()
            assert snapshot["tenant:alpha"]["budget"]["resets_at"] is None

    asyncio.run(main())


def test_snapshot_is_json_for_the_admin_api(make_limiter: MakeLimiter) -> None:
    quotas = QuotaConfig(requests_per_minute=10, tokens_per_minute=100, max_concurrent=2)

    async def main() -> None:
        async with opened(make_limiter(config(quotas, day_budget(5)), FakeClock())) as limiter:
            admission = await limiter.acquire(ALPHA)
            await limiter.hold_budget(admission, 1.5)
            snapshot = json.loads(json.dumps(await limiter.snapshot()))
            assert snapshot == {
                "tenant:alpha": {
                    "quotas": {
                        "requests_per_minute": {"limit": 10, "available": 9.0},
                        "tokens_per_minute": {"limit": 100, "available": 100.0},
                        "max_concurrent": {"limit": 2, "in_flight": 1},
                    },
                    "budget": {
                        "limit_usd": 5.0,
                        "period": "day",
                        "spent_usd": 0.0,
                        "held_usd": 1.5,
                        "resets_at": "2025-01-16T00:00:00Z",
                    },
                }
            }

    asyncio.run(main())


# -- two replicas sharing one Redis -------------------------------------------------------------------


def replicas(cfg: ServerConfig, url: str, clock: FakeClock) -> tuple[Limiter, Limiter]:
    shared = cfg.model_copy(update={"redis_url": url})
    return Limiter.from_config(shared, clock), Limiter.from_config(shared, clock)


def test_replicas_share_one_request_quota_and_one_budget(empty_redis: str) -> None:
    cfg = config(QuotaConfig(requests_per_minute=5), day_budget(1.0))

    async def main() -> None:
        one, two = replicas(cfg, empty_redis, FakeClock())
        async with opened(one), opened(two):
            admissions = [await (one if i % 2 else two).acquire(ALPHA) for i in range(5)]
            for replica in (one, two):
                assert (await refused(replica.acquire(ALPHA))).limit == "requests_per_minute"
            # An admission goes back to the replica that made it: $0.25 each, on both replicas.
            for i, admission in enumerate(admissions[:4]):
                await (one if i % 2 else two).hold_budget(admission, 0.25)
            error = await refused(two.hold_budget(admissions[4], 0.01))
            assert (error.scope, error.limit) == ("tenant:alpha", "budget")
            await two.finish(admissions[0], tokens=0, cost_usd=0)
            await two.hold_budget(admissions[4], 0.25)
            assert (await one.snapshot())["tenant:alpha"]["budget"]["held_usd"] == 1.0

    asyncio.run(main())


def test_replicas_never_exceed_max_concurrent_together(empty_redis: str) -> None:
    async def main() -> None:
        one, two = replicas(config(QuotaConfig(max_concurrent=3)), empty_redis, FakeClock())
        async with opened(one), opened(two):
            most_in_flight, refusals = await send_together([one, two], 50, hold_until_all_answered=True)
            assert (most_in_flight, len(refusals)) == (3, 47)
            assert {e.limit for e in refusals} == {"max_concurrent"}
            most_in_flight, _ = await send_together([one, two], 50, hold_until_all_answered=False)
            assert 1 <= most_in_flight <= 3

    asyncio.run(main())


def test_redis_records_expire_once_their_period_is_over(empty_redis: str) -> None:
    clock = FakeClock(datetime(2025, 1, 15, 23, 0, 0, tzinfo=UTC))
    quotas = QuotaConfig(requests_per_minute=60, tokens_per_minute=600, max_concurrent=2)
    cfg = ServerConfig(
        tenants=[
            TenantConfig(name="alpha", api_keys=["a"], team="ml", quotas=quotas, budget=day_budget(1)),
            TenantConfig(name="beta", api_keys=["b"], budget=BudgetConfig(limit_usd=1, period="hour")),
        ],
        teams=[TeamConfig(name="ml", budget=BudgetConfig(limit_usd=1, period="total"))],
        redis_url=empty_redis,
    )

    async def main() -> None:
        async with opened(Limiter.from_config(cfg, clock)) as limiter:
            alpha = Principal.from_config(cfg, "alpha")
            await limiter.acquire(alpha)  # still in flight
            # Charged without a hold: the period's records are made by the charge.
            await limiter.finish(await limiter.acquire(alpha), tokens=60, cost_usd=0.1)
            await limiter.hold_budget(await limiter.acquire(Principal("beta")), 0.5)  # made by the hold

    asyncio.run(main())
    with redis.Redis.from_url(empty_redis, decode_responses=True) as client:
        ttls = {key: client.ttl(key) for key in client.scan_iter()}
    assert all(key.startswith("inferline:") for key in ttls)
    assert ttls["inferline:budget:team:ml:total:0"] == -1  # a total never resets
    day = ttls[f"inferline:budget:tenant:alpha:day:{int(clock.now) - 23 * 3600}"]
    hour = ttls[f"inferline:budget:tenant:beta:hour:{int(clock.now)}"]
    # The time left in the period, then a grace for requests finishing late.
    assert 3600 < day <= 3600 + PERIOD_GRACE_S
    assert 3600 < hour <= 3600 + PERIOD_GRACE_S
    assert 0 < ttls["inferline:quota:tenant:alpha:rpm"] <= 61  # a bucket expires once it is full again
    assert 0 < ttls["inferline:quota:tenant:alpha:tpm"] <= 61
    assert 0 < ttls["inferline:quota:tenant:alpha:in_flight"] <= 3600
    # The hold's lease lives beside its record, and goes with it.
    assert ttls[f"inferline:budget:tenant:beta:hour:{int(clock.now)}:holds"] == hour
    assert len(ttls) == 7


def test_a_replica_that_dies_mid_request_frees_its_total_budget_hold_after_the_lease(
    empty_redis: str,
) -> None:
    cfg = config(QuotaConfig(max_concurrent=1), BudgetConfig(limit_usd=1, period="total"))
    clock = FakeClock()

    async def main() -> None:
        one, two = replicas(cfg, empty_redis, clock)
        async with opened(two):
            await one.hold_budget(await one.acquire(ALPHA), 0.75)
            await one.close()  # the replica dies: it never finishes or releases
            clock.advance(DEFAULT_LEASE_S - 1)
            assert (await refused(two.acquire(ALPHA))).limit == "max_concurrent"
            assert (await two.snapshot())["tenant:alpha"]["budget"]["held_usd"] == 0.75
            clock.advance(1)  # the lease is over: the slot and the hold lapse together
            admission = await two.acquire(ALPHA)
            await two.hold_budget(admission, 1.0)  # the whole budget again
            await two.finish(admission, tokens=0, cost_usd=0.5)
            budget = (await two.snapshot())["tenant:alpha"]["budget"]
            assert (budget["spent_usd"], budget["held_usd"]) == (0.5, 0.0)

    asyncio.run(main())


def test_a_request_that_outlives_its_lease_is_still_charged_once(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()

    async def main() -> None:
        cfg = config(budget=BudgetConfig(limit_usd=1, period="total"))
        async with opened(make_limiter(cfg, clock)) as limiter:
            admission = await limiter.acquire(ALPHA)
            await limiter.hold_budget(admission, 0.5)
            clock.advance(DEFAULT_LEASE_S + 1)
            await limiter.finish(admission, tokens=0, cost_usd=0.25)  # its hold had lapsed already
            budget = (await limiter.snapshot())["tenant:alpha"]["budget"]
            assert (budget["spent_usd"], budget["held_usd"]) == (0.25, 0.0)

    asyncio.run(main())
