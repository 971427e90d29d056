"""Cross-worker invalidation on a real redis-server: one worker's event bump reaches another
worker's in-process entries through pub/sub, and a worker that lost its subscription empties L1."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from devtools.local_redis import LocalRedis
from recsys.stores.cache import ResultCache
from recsys.stores.invalidation import InvalidationListener, invalidation_channel
from tests.recsys.stores.test_cache import CONFIG, Compute, FakeClock, key, run
from tests.support.events import Events


def listener(cache: ResultCache, redis_url: str, events: Events) -> InvalidationListener:
    return InvalidationListener(redis_url, invalidation_channel(CONFIG.key_prefix),
                                cache.forget_user, cache.forget_all, retry_s=0.1,
                                on_event=events)


async def until(condition: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = condition()
        if isinstance(outcome, Awaitable):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_an_event_on_one_worker_drops_the_users_entries_on_another(redis_url: str) -> None:
    async def scenario() -> None:
        clock, events = FakeClock(), Events()  # the clock never moves: no L1 entry expires
        async with (ResultCache(CONFIG, redis_url, clock=clock) as a,
                    ResultCache(CONFIG, redis_url, clock=clock) as b):
            feed = listener(b, redis_url, events)
            feed.start()
            await until(lambda: feed.subscriptions == 1)
            for user in ("u1", "u2"):
                await a.get_or_compute("results", key(), Compute(f"{user} before"), user_id=user)
            await a.flush()
            for user in ("u1", "u2"):
                assert (await b.get_or_compute("results", key(), Compute(), user_id=user))[1] \
                    == "l2"
                assert (await b.get_or_compute("results", key(), Compute(), user_id=user))[1] \
                    == "l1"

            await a.bump_user_generation("u1")
            await until(lambda: events.count("invalidation") == 1)
            after = Compute("u1 after")
            assert await b.get_or_compute("results", key(), after, user_id="u1") == \
                ("u1 after", "miss")  # not b's in-memory list: the bump said it was stale
            assert await b.get_or_compute("results", key(), after, user_id="u1") == \
                ("u1 after", "l1")  # and the new one is held again
            assert await b.get_or_compute("results", key(), Compute(), user_id="u2") == \
                ("u2 before", "l1")  # another user's entries stay
            await feed.aclose()
        assert events.count("invalidation_feed", state="up") == 1

    run(scenario())


def test_a_worker_that_lost_its_subscription_empties_l1_and_follows_again(
        redis_server: LocalRedis, redis_url: str) -> None:
    async def scenario() -> None:
        events = Events()
        async with ResultCache(CONFIG, redis_url) as a, ResultCache(CONFIG, redis_url) as b:
            feed = listener(b, redis_url, events)
            feed.start()
            await until(lambda: feed.subscriptions == 1)
            await b.get_or_compute("results", key(), Compute("held"), user_id="u1")
            await b.get_or_compute("results", key("no user"), Compute("held"))
            await b.flush()

            redis_server.stop()  # a bump now could not reach b: which users it missed is unknown
            await until(lambda: events.count("invalidation_feed", state="down") >= 1)
            redis_server.start()
            await until(lambda: feed.subscriptions == 2)
            # L1 is empty: every entry is read from Redis again.
            assert (await b.get_or_compute("results", key("no user"), Compute("new")))[1] != "l1"
            assert (await b.get_or_compute("results", key(), Compute("new"), user_id="u1"))[1] \
                != "l1"

            await a.bump_user_generation("u1")  # and bumps arrive again
            await until(lambda: events.count("invalidation") == 1)
            assert await b.get_or_compute("results", key(), Compute("newer"), user_id="u1") \
                == ("newer", "miss")
            await feed.aclose()

    try:
        run(scenario())
    finally:
        redis_server.start()
