"""Where quota and budget state lives: in this process, or in Redis shared by every replica.

Both stores do each check-and-update as one indivisible step: in-process because no `await` falls
inside one, in Redis because each is one Lua script. So a tenant's limits hold across concurrent
requests and, with Redis, across replicas. The caller passes `now` (its wall clock) to every call, which
keeps the two stores alike and lets tests drive time; replicas' clocks only need to agree roughly.

Token buckets are (level, updated_at) and refill continuously at capacity per minute; a missing bucket
is full, so it may expire once it would have refilled. Concurrency is the set of admission ids in flight,
scored by when they began. Budget holds are leases too: each is kept under its admission id with the
moment it lapses, and `held` is the sum of the live ones. Slots and holds older than `lease_s` are
dropped, so a replica that dies with requests in flight frees their slots and their budget eventually,
a `total` budget (which never expires) included. Money is integer micro-dollars.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the client's import is 0.11 s of every start; a server without Redis never needs it
    from redis.asyncio import Redis


PREFIX = "inferline:"
DEFAULT_LEASE_S = 3600.0
"""How long a request's concurrency slot and budget hold outlive a replica that died holding them."""
READY_WITHIN_S = 1e-6
"""A bucket this close to one whole token counts as holding it: epoch seconds as floats carry about
0.2 µs of rounding, which would otherwise refuse a caller who waited exactly retry_after_s."""


@dataclass(frozen=True)
class QuotaSpec:
    scope: str  # "tenant:alpha"
    requests_per_minute: int | None  # capacity of the request bucket
    tokens_per_minute: int | None  # capacity of the token bucket
    max_concurrent: int | None  # most requests in flight


@dataclass(frozen=True)
class QuotaRefusal:
    limit: str  # "requests_per_minute", "tokens_per_minute" or "max_concurrent"
    retry_after_s: float  # when it would pass (a guess for max_concurrent)
    level: float  # the bucket's level (negative: tokens in debt) or the requests in flight


@dataclass(frozen=True)
class QuotaLevels:
    requests_available: float | None  # None where the quota is not set
    tokens_available: float | None  # negative while in debt
    num_in_flight: int | None


@dataclass(frozen=True)
class BudgetLine:
    key: str  # scope, period and period start: "budget:team:ml:day:1736899200"
    limit_micros: int  # the budget in micro-dollars
    ttl_s: float | None  # how long from now the record must outlive its period; None: never expires


@dataclass(frozen=True)
class BudgetRefusal:
    index: int  # the refusing line
    spent_micros: int
    held_micros: int


@dataclass(frozen=True)
class SettleLine:
    key: str  # as in BudgetLine
    spend_micros: int  # cost to add to spent
    ttl_s: float | None


def refill(level: float, updated_at: float, capacity: int, now: float) -> float:
    return min(float(capacity), level + max(0.0, now - updated_at) * capacity / 60.0)


def wait_for_one(level: float, capacity: int) -> float:
    """Seconds until a bucket at `level` holds one whole token."""
    return (1.0 - level) * 60.0 / capacity


class LimitStore(Protocol):
    async def take_quotas(self, spec: QuotaSpec, admission_id: str, now: float) -> QuotaRefusal | None:
        """Take one request token and a concurrency slot if the request, token and concurrency quotas
        all allow it; otherwise change nothing and say the refusal with the longest wait."""
        ...

    async def end_quotas(self, spec: QuotaSpec, admission_id: str, num_tokens: int, now: float) -> None:
        """Free the concurrency slot and debit the tokens used (the token bucket may go into debt)."""
        ...

    async def hold(
        self, lines: list[BudgetLine], hold_id: str, amount_micros: int, now: float
    ) -> BudgetRefusal | None:
        """Hold amount on every line, as a lease named hold_id, if spent + held + amount <= limit on all
        of them; otherwise hold nothing and say which line refused."""
        ...

    async def settle(self, lines: list[SettleLine], release_hold: str | None, now: float) -> None:
        """Drop the hold named release_hold from each line (if it has not lapsed) and add the spend."""
        ...

    async def read_quotas(self, spec: QuotaSpec, now: float) -> QuotaLevels: ...

    async def read_budgets(self, keys: list[str], now: float) -> list[tuple[int, int]]:
        """(spent, held) micro-dollars of each budget record; (0, 0) where there is none yet."""
        ...

    async def close(self) -> None: ...


class MemoryLimitStore:
    """One process's limits. Nothing here awaits, so each call is atomic under asyncio."""

    def __init__(self, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.lease_s = lease_s
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (level, updated_at)
        self.in_flight: dict[str, dict[str, float]] = {}  # scope -> admission id -> start time
        self.budgets: dict[str, list[float]] = {}  # key -> [spent, held, expires_at (inf: never)]
        self.holds: dict[str, dict[str, tuple[int, float]]] = {}  # key -> hold id -> (amount, lapses_at)

    def _level(self, key: str, capacity: int, now: float) -> float:
        level, updated_at = self.buckets.get(key, (float(capacity), now))
        return refill(level, updated_at, capacity, now)

    def _slots(self, scope: str, now: float) -> dict[str, float]:
        slots = self.in_flight.setdefault(scope, {})
        for admission_id in [a for a, start in slots.items() if start <= now - self.lease_s]:
            del slots[admission_id]
        return slots

    async def take_quotas(self, spec: QuotaSpec, admission_id: str, now: float) -> QuotaRefusal | None:
        refusals = []
        rpm_key = f"{spec.scope}:rpm"
        if spec.requests_per_minute is not None:
            level = self._level(rpm_key, spec.requests_per_minute, now)
            wait = wait_for_one(level, spec.requests_per_minute)
            if wait > READY_WITHIN_S:
                refusals.append(QuotaRefusal("requests_per_minute", wait, level))
        if spec.tokens_per_minute is not None:
            level = self._level(f"{spec.scope}:tpm", spec.tokens_per_minute, now)
            wait = wait_for_one(level, spec.tokens_per_minute)
            if wait > READY_WITHIN_S:
                refusals.append(QuotaRefusal("tokens_per_minute", wait, level))
        slots = self._slots(spec.scope, now)
        if spec.max_concurrent is not None and len(slots) >= spec.max_concurrent:
            refusals.append(QuotaRefusal("max_concurrent", 1.0, len(slots)))
        if refusals:
            return max(refusals, key=lambda r: r.retry_after_s)
        if spec.requests_per_minute is not None:
            self.buckets[rpm_key] = (self._level(rpm_key, spec.requests_per_minute, now) - 1, now)
        if spec.max_concurrent is not None:
            slots[admission_id] = now
        return None

    async def end_quotas(self, spec: QuotaSpec, admission_id: str, num_tokens: int, now: float) -> None:
        self.in_flight.get(spec.scope, {}).pop(admission_id, None)
        if spec.tokens_per_minute is not None and num_tokens > 0:
            key = f"{spec.scope}:tpm"
            self.buckets[key] = (self._level(key, spec.tokens_per_minute, now) - num_tokens, now)

    def _record(self, key: str, now: float) -> list[float] | None:
        record = self.budgets.get(key)
        if record is None:
            return None
        if record[2] <= now:
            del self.budgets[key]
            self.holds.pop(key, None)
            return None
        holds = self.holds.get(key, {})
        for hold_id in [h for h, (_, lapses_at) in holds.items() if lapses_at <= now]:
            record[1] -= holds.pop(hold_id)[0]
        return record

    def _touch(self, key: str, ttl_s: float | None, now: float) -> list[float]:
        record = self._record(key, now)
        if record is None:
            # A new period began: forget the records of periods long over.
            for old in [k for k, r in self.budgets.items() if r[2] <= now]:
                del self.budgets[old]
                self.holds.pop(old, None)
            record = self.budgets[key] = [0, 0, float("inf")]
        if ttl_s is not None:
            record[2] = now + ttl_s
        return record

    async def hold(
        self, lines: list[BudgetLine], hold_id: str, amount_micros: int, now: float
    ) -> BudgetRefusal | None:
        for index, line in enumerate(lines):
            spent, held, _ = self._record(line.key, now) or (0, 0, 0)
            if spent + held + amount_micros > line.limit_micros:
                return BudgetRefusal(index, int(spent), int(held))
        for line in lines:
            self._touch(line.key, line.ttl_s, now)[1] += amount_micros
            self.holds.setdefault(line.key, {})[hold_id] = (amount_micros, now + self.lease_s)
        return None

    async def settle(self, lines: list[SettleLine], release_hold: str | None, now: float) -> None:
        for line in lines:
            record = self._record(line.key, now)
            held = self.holds.get(line.key, {}).pop(release_hold, None) if release_hold else None
            if record is None and not line.spend_micros:
                continue
            record = self._touch(line.key, line.ttl_s, now)
            record[0] += line.spend_micros
            record[1] -= held[0] if held is not None else 0

    async def read_quotas(self, spec: QuotaSpec, now: float) -> QuotaLevels:
        rpm, tpm, slots = spec.requests_per_minute, spec.tokens_per_minute, spec.max_concurrent
        return QuotaLevels(
            requests_available=None if rpm is None else self._level(f"{spec.scope}:rpm", rpm, now),
            tokens_available=None if tpm is None else self._level(f"{spec.scope}:tpm", tpm, now),
            num_in_flight=None if slots is None else len(self._slots(spec.scope, now)),
        )

    async def read_budgets(self, keys: list[str], now: float) -> list[tuple[int, int]]:
        records = [self._record(key, now) for key in keys]
        return [(0, 0) if r is None else (int(r[0]), int(r[1])) for r in records]

    async def close(self) -> None:
        return None


# Shared by the quota scripts: a bucket's level now (a missing bucket is full), and saving it with an
# expiry at the moment it would be full again. Numbers travel as strings: Redis truncates Lua numbers.
_BUCKET_LUA = """
local now = tonumber(ARGV[1])
local function level(key, capacity)
  local state = redis.call('HMGET', key, 'level', 'ts')
  if not state[1] then return capacity end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.min(capacity, tonumber(state[1]) + elapsed * capacity / 60)
end
local function save(key, capacity, value)
  redis.call('HSET', key, 'level', string.format('%.17g', value), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil((capacity - value) * 60000 / capacity) + 1000)
end
"""

# KEYS: rpm bucket, tpm bucket, in-flight set.
# ARGV: now, rpm, tpm, max_concurrent (0: unset), id, lease_s, READY_WITHIN_S.
_TAKE_QUOTAS_LUA = (
    _BUCKET_LUA
    + """
local rpm, tpm, max_slots = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local worst, worst_wait, worst_level = nil, -1, 0
local function refuse(limit, wait, value)
  if wait > worst_wait then worst, worst_wait, worst_level = limit, wait, value end
end
local function check(limit, key, capacity)
  local value = level(key, capacity)
  local wait = (1 - value) * 60 / capacity
  if wait > tonumber(ARGV[7]) then refuse(limit, wait, value) end
  return value
end
local rpm_level = 0
if rpm > 0 then rpm_level = check('requests_per_minute', KEYS[1], rpm) end
if tpm > 0 then check('tokens_per_minute', KEYS[2], tpm) end
if max_slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]))
  local num_slots = redis.call('ZCARD', KEYS[3])
  if num_slots >= max_slots then refuse('max_concurrent', 1, num_slots) end
end
if worst then
  return {worst, string.format('%.17g', worst_wait), string.format('%.17g', worst_level)}
end
if rpm > 0 then save(KEYS[1], rpm, rpm_level - 1) end
if max_slots > 0 then
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[5])
  redis.call('EXPIRE', KEYS[3], math.ceil(tonumber(ARGV[6])))
end
return {}
"""
)

# KEYS: tpm bucket, in-flight set. ARGV: now, tpm (0: unset), tokens, id.
_END_QUOTAS_LUA = (
    _BUCKET_LUA
    + """
local tpm, tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
if tpm > 0 and tokens > 0 then save(KEYS[1], tpm, level(KEYS[1], tpm) - tokens) end
return 0
"""
)

# A budget record is a hash (spent, held, and each live hold's amount as `hold:<id>`) beside a sorted
# set `<key>:holds` of hold ids scored by when they lapse. Lapsed holds leave `held` before each use.
_BUDGET_LUA = """
local function drop_lapsed(key, now)
  local lapsed = redis.call('ZRANGEBYSCORE', key .. ':holds', '-inf', now)
  for _, id in ipairs(lapsed) do
    local amount = redis.call('HGET', key, 'hold:' .. id)
    if amount then
      redis.call('HINCRBY', key, 'held', -tonumber(amount))
      redis.call('HDEL', key, 'hold:' .. id)
    end
  end
  if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', key .. ':holds', '-inf', now) end
end
local function expire(key, ttl_ms)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', key, ttl_ms)
    redis.call('PEXPIRE', key .. ':holds', ttl_ms)
  end
end
"""

# KEYS: budget records. ARGV: now, hold id, amount, lease_s, then per key its limit and ttl_ms (0: never).
_HOLD_LUA = (
    _BUDGET_LUA
    + """
local now, id, amount = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local lapses_at = now + tonumber(ARGV[4])
for i, key in ipairs(KEYS) do
  drop_lapsed(key, now)
  local state = redis.call('HMGET', key, 'spent', 'held')
  local spent, held = tonumber(state[1] or '0'), tonumber(state[2] or '0')
  if spent + held + amount > tonumber(ARGV[3 + 2 * i]) then return {i - 1, spent, held} end
end
for i, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'held', amount)
  redis.call('HSET', key, 'hold:' .. id, amount)
  redis.call('ZADD', key .. ':holds', string.format('%.17g', lapses_at), id)
  expire(key, tonumber(ARGV[4 + 2 * i]))
end
return {}
"""
)

# KEYS: budget records. ARGV: now, hold id to release ('' for none), then per key spend and ttl_ms.
_SETTLE_LUA = (
    _BUDGET_LUA
    + """
local now, id = tonumber(ARGV[1]), ARGV[2]
for i, key in ipairs(KEYS) do
  local spend, ttl_ms = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  drop_lapsed(key, now)
  if id ~= '' and redis.call('ZREM', key .. ':holds', id) == 1 then
    redis.call('HINCRBY', key, 'held', -tonumber(redis.call('HGET', key, 'hold:' .. id)))
    redis.call('HDEL', key, 'hold:' .. id)
  end
  if spend ~= 0 then redis.call('HINCRBY', key, 'spent', spend) end
  if redis.call('EXISTS', key) == 1 then expire(key, ttl_ms) end
end
return 0
"""
)

# KEYS: budget records. ARGV: now. Returns spent, held of each.
_READ_BUDGETS_LUA = (
    _BUDGET_LUA
    + """
local now, result = tonumber(ARGV[1]), {}
for _, key in ipairs(KEYS) do
  drop_lapsed(key, now)
  local state = redis.call('HMGET', key, 'spent', 'held')
  table.insert(result, state[1] or '0')
  table.insert(result, state[2] or '0')
end
return result
"""
)


def _ttl_ms(ttl_s: float | None) -> int:
    return 0 if ttl_s is None else max(1000, int(ttl_s * 1000))


class RedisLimitStore:
    """Limits shared by every replica using one Redis; each check-and-update is one Lua script."""

    def __init__(self, client: Redis, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.client = client
        self.lease_s = lease_s
        self._take_quotas = client.register_script(_TAKE_QUOTAS_LUA)
        self._end_quotas = client.register_script(_END_QUOTAS_LUA)
        self._hold = client.register_script(_HOLD_LUA)
        self._settle = client.register_script(_SETTLE_LUA)
        self._read_budgets = client.register_script(_READ_BUDGETS_LUA)

    @classmethod
    def from_url(cls, url: str) -> RedisLimitStore:
        from redis.asyncio import Redis

        return cls(Redis.from_url(url, decode_responses=True))

    @staticmethod
    def _quota_keys(scope: str) -> list[str]:
        return [f"{PREFIX}quota:{scope}:{name}" for name in ("rpm", "tpm", "in_flight")]

    async def take_quotas(self, spec: QuotaSpec, admission_id: str, now: float) -> QuotaRefusal | None:
        args: list[str | int] = [repr(now), spec.requests_per_minute or 0, spec.tokens_per_minute or 0]
        args += [spec.max_concurrent or 0, admission_id, repr(self.lease_s), repr(READY_WITHIN_S)]
        reply: Any = await self._take_quotas(keys=self._quota_keys(spec.scope), args=args)
        if not reply:
            return None
        limit, wait, level = reply
        return QuotaRefusal(limit, float(wait), float(level))

    async def end_quotas(self, spec: QuotaSpec, admission_id: str, num_tokens: int, now: float) -> None:
        keys = self._quota_keys(spec.scope)[1:]
        await self._end_quotas(
            keys=keys, args=[repr(now), spec.tokens_per_minute or 0, num_tokens, admission_id]
        )

    async def hold(
        self, lines: list[BudgetLine], hold_id: str, amount_micros: int, now: float
    ) -> BudgetRefusal | None:
        args: list[str | int] = [repr(now), hold_id, amount_micros, repr(self.lease_s)]
        for line in lines:
            args += [line.limit_micros, _ttl_ms(line.ttl_s)]
        reply: Any = await self._hold(keys=[PREFIX + line.key for line in lines], args=args)
        if not reply:
            return None
        index, spent, held = reply
        return BudgetRefusal(int(index), int(spent), int(held))

    async def settle(self, lines: list[SettleLine], release_hold: str | None, now: float) -> None:
        args: list[str | int] = [repr(now), release_hold or ""]
        for line in lines:
            args += [line.spend_micros, _ttl_ms(line.ttl_s)]
        await self._settle(keys=[PREFIX + line.key for line in lines], args=args)

    async def read_quotas(self, spec: QuotaSpec, now: float) -> QuotaLevels:
        rpm_key, tpm_key, slots_key = self._quota_keys(spec.scope)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hmget(rpm_key, ["level", "ts"])
            pipe.hmget(tpm_key, ["level", "ts"])
            pipe.zcount(slots_key, f"({now - self.lease_s!r}", "+inf")
            rpm_state, tpm_state, num_slots = await pipe.execute()

        def level(state: list[str | None], capacity: int | None) -> float | None:
            if capacity is None:
                return None
            if state[0] is None or state[1] is None:
                return float(capacity)
            return refill(float(state[0]), float(state[1]), capacity, now)

        return QuotaLevels(
            requests_available=level(rpm_state, spec.requests_per_minute),
            tokens_available=level(tpm_state, spec.tokens_per_minute),
            num_in_flight=None if spec.max_concurrent is None else int(num_slots),
        )

    async def read_budgets(self, keys: list[str], now: float) -> list[tuple[int, int]]:
        if not keys:
            return []
        flat: Any = await self._read_budgets(keys=[PREFIX + key for key in keys], args=[repr(now)])
        return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def close(self) -> None:
        await self.client.aclose()
