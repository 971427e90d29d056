"""Where a canary lives: its state, its counts per stage and variant, the lists served to users
(to attribute their clicks) and the lease of the one worker that judges, all in Redis, so every
worker and replica sees one canary and a restart resumes it."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from recsys.errors import StoreError
from recsys.experiments.canary import CANARY, CONTROL, CanaryState, Counts
from recsys.stores.redis_connection import ONE_ROUND_TRIP

SERVED_TTL_S = 1800  # a click this long after the recommendation is not attributed to it
COUNTS_TTL_S = 30 * 24 * 3600  # the counts of a canary outlive it, for the notebook
VERDICTS_KEPT = 20_000  # per canary: hours of one verdict a tick


class CanaryStore:
    def __init__(self, redis_url: str, prefix: str = "recsys:canary:", timeout_s: float = 0.5) -> None:
        self.redis = aioredis.Redis.from_url(redis_url, socket_timeout=timeout_s,
                                             socket_connect_timeout=timeout_s, **ONE_ROUND_TRIP)
        self.prefix, self.timeout_s = prefix, timeout_s

    async def load(self) -> CanaryState | None:
        raw = await self._call(lambda: self.redis.get(self.prefix + "state"))
        return None if raw is None else CanaryState.from_json(json.loads(raw))

    async def save(self, state: CanaryState, replacing: CanaryState | None = None) -> bool:
        """Save `state`; with `replacing`, only if the saved state is still that one (False
        otherwise: another worker or an operator moved it first, and nothing is written)."""
        key, document = self.prefix + "state", json.dumps(state.to_json())
        if replacing is None:
            await self._call(lambda: self.redis.set(key, document))
            return True

        async def swap() -> bool:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None or CanaryState.from_json(json.loads(raw)) != replacing:
                        return False
                    pipe.multi()
                    pipe.set(key, document)
                    await pipe.execute()
                    return True
                except WatchError:
                    return False
        return bool(await self._call(swap))

    async def add_counts(self, canary_id: str, stage: int, variant: str,
                         fields: dict[str, int]) -> None:
        key = self._counts_key(canary_id, stage, variant)

        async def add() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, value in fields.items():
                    pipe.hincrby(key, name, value)
                pipe.expire(key, COUNTS_TTL_S)
                await pipe.execute()
        await self._call(add)

    async def counts(self, canary_id: str, stage: int) -> dict[str, Counts]:
        """Each variant's counts in one stage, every worker's added up."""
        keys = [self._counts_key(canary_id, stage, variant) for variant in (CONTROL, CANARY)]

        async def read() -> list[dict[bytes, bytes]]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                return list(await pipe.execute())
        raw = await self._call(read)
        return {variant: Counts.from_fields({k.decode(): int(v) for k, v in fields.items()})
                for variant, fields in zip((CONTROL, CANARY), raw)}

    async def add_verdict(self, canary_id: str, verdict: dict[str, Any]) -> None:
        """Append one judgement of the current stage to the canary's record of them."""
        key, document = f"{self.prefix}{canary_id}:verdicts", json.dumps(verdict)

        async def add() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(key, document)
                pipe.ltrim(key, -VERDICTS_KEPT, -1)
                pipe.expire(key, COUNTS_TTL_S)
                await pipe.execute()
        await self._call(add)

    async def verdicts(self, canary_id: str, last: int | None = None) -> list[dict[str, Any]]:
        """The canary's judgements, oldest first (the `last` ones only when given)."""
        key = f"{self.prefix}{canary_id}:verdicts"
        raw = await self._call(lambda: self.redis.lrange(key, -last if last else 0, -1))
        return [json.loads(entry) for entry in raw]

    async def remember_served(self, user_id: str, record: dict[str, Any]) -> None:
        document = json.dumps(record)
        await self._call(lambda: self.redis.set(self._served_key(user_id), document,
                                                ex=SERVED_TTL_S))

    async def served_to(self, user_id: str) -> dict[str, Any] | None:
        raw = await self._call(lambda: self.redis.get(self._served_key(user_id)))
        return None if raw is None else json.loads(raw)

    async def lease(self, holder: str, seconds: float) -> bool:
        """True when `holder` holds the judging lease for the next `seconds` (taken or renewed)."""
        key, ms = self.prefix + "lease", int(seconds * 1000)

        async def take() -> bool:
            if await self.redis.set(key, holder, nx=True, px=ms):
                return True
            if await self.redis.get(key) == holder.encode():
                await self.redis.pexpire(key, ms)
                return True
            return False
        return bool(await self._call(take))

    async def release(self, holder: str) -> bool:
        """Give the judging lease up now if `holder` holds it (True), so that another worker
        takes it at its next tick instead of when it expires."""
        key = self.prefix + "lease"

        async def give_up() -> bool:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    if await pipe.get(key) != holder.encode():
                        return False
                    pipe.multi()
                    pipe.delete(key)
                    await pipe.execute()
                    return True
                except WatchError:  # renewed or taken meanwhile: not this holder's to give up
                    return False
        return bool(await self._call(give_up))

    async def aclose(self) -> None:
        await self.redis.aclose()

    def _counts_key(self, canary_id: str, stage: int, variant: str) -> str:
        return f"{self.prefix}{canary_id}:{stage}:{variant}"

    def _served_key(self, user_id: str) -> str:
        return f"{self.prefix}served:{user_id}"

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await asyncio.wait_for(command(), self.timeout_s * 4)
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            raise StoreError(f"canary store: {type(error).__name__}: {error}") from error
