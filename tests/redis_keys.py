"""Removing what a test or a bench wrote to the shared Redis under its own key prefix."""

from __future__ import annotations

from redis.asyncio import Redis


async def delete_prefixed(redis: Redis, prefix: str) -> None:
    """Delete every key that starts with `prefix`."""
    keys = [k async for k in redis.scan_iter(match=prefix + "*")]
    if keys:
        await redis.delete(*keys)
