"""Cache isolation between tenants: the prefix index, vLLM's cache_salt, and keys in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from router.cli import main
from router.config import RouterConfig
from router.tenants import cache_salt, generated_name

from .conftest import Fake, RedisServer, Stack, with_replicas
from .test_tenants import KEY_A, KEY_B, client, two_keys, with_server

SYSTEM = "You are a careful assistant for the handbook. " * 40


def marked(question: str) -> list[Any]:
    return [
        {
            "role": "system",
            "content": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "user", "content": question},
    ]


def cache_of(c: openai.OpenAI, question: str) -> str:
    raw = c.chat.completions.with_raw_response.create(model="m", messages=marked(question))
    return raw.headers["X-DI-Cache"]


def shared(config: RouterConfig) -> RouterConfig:
    cache = config.cache.model_copy(update={"share_across_tenants": True})
    return two_keys(config).model_copy(update={"cache": cache})


def test_a_tenant_never_hits_another_tenants_prefix(make_stack: Any) -> None:
    live: Stack = make_stack(edit=two_keys)
    a, b = client(live, KEY_A), client(live, KEY_B)
    assert cache_of(a, "q1") == "miss"
    assert cache_of(a, "q2") == "hit"
    assert cache_of(b, "q3") == "miss"  # same prefix, other tenant: no probe of A's prefixes
    assert cache_of(b, "q4") == "hit"


def test_sharing_across_tenants_is_a_switch(make_stack: Any) -> None:
    live: Stack = make_stack(edit=shared)
    assert cache_of(client(live, KEY_A), "q1") == "miss"
    assert cache_of(client(live, KEY_B), "q2") == "hit"


def test_cache_salt_reaches_the_upstream_per_tenant(make_stack: Any, fake_upstream: Fake) -> None:
    def edit(config: RouterConfig) -> RouterConfig:
        routed = with_replicas(config, "sim-text", [fake_upstream.url], cache_salt=True)
        return two_keys(routed)

    live: Stack = make_stack(edit=edit)
    a, b = client(live, KEY_A), client(live, KEY_B)
    a.chat.completions.create(model="m", messages=marked("q"))
    # A client cannot pick another tenant's salt: the router's replaces the client's.
    b.chat.completions.create(model="m", messages=user_msg(), extra_body={"cache_salt": "x"})
    a.responses.create(model="m", input="through the Responses API too")
    salts = [r.body.get("cache_salt") for r in fake_upstream.upstream.received]
    assert salts == [cache_salt("team-a"), cache_salt(_name_b()), cache_salt("team-a")]
    assert salts[0] != salts[1]
    assert all(
        KEY_A not in str(r.body) and KEY_B not in str(r.body) for r in received(fake_upstream)
    )
    assert all(s is not None and len(s) == 32 for s in salts)


def test_no_cache_salt_without_the_switch_or_without_keys(
    make_stack: Any, fake_upstream: Fake
) -> None:
    live: Stack = make_stack(
        edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url], cache_salt=True)
    )
    live.client().chat.completions.create(model="m", messages=user_msg())
    assert "cache_salt" not in fake_upstream.upstream.received[-1].body


def test_cache_salt_reaches_a_messages_backend(make_stack: Any, fake_upstream: Fake) -> None:
    def edit(config: RouterConfig) -> RouterConfig:
        routed = with_replicas(
            config, "sim-text", [fake_upstream.url], api="messages", cache_salt=True
        )
        return two_keys(routed)

    live: Stack = make_stack(edit=edit)
    base = live.base_url.removesuffix("/v1")
    with anthropic.Anthropic(base_url=base, api_key=KEY_A, max_retries=0) as a:
        a.messages.create(model="m", max_tokens=5, messages=user_msg())
    assert fake_upstream.upstream.received[-1].body["cache_salt"] == cache_salt("team-a")


def user_msg() -> list[Any]:
    return [{"role": "user", "content": "hi"}]


def received(fake: Fake) -> list[Any]:
    return list(fake.upstream.received)


def _name_b() -> str:
    return generated_name(KEY_B)


def test_keys_in_redis_authenticate_and_revoke(
    make_stack: Any, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(config: RouterConfig) -> RouterConfig:
        cache = config.cache.model_copy(update={"redis_url": SecretStr(redis_server.url)})
        keyed = with_server(config, redis_keys=True, key_cache_seconds=0)
        return keyed.model_copy(update={"cache": cache})

    where = ["--redis-url", redis_server.url]
    assert main(["keys", "create", *where, "--name", "team-r", "--allowed-types", "text"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("sk-di-")
    assert main(["keys", "list", *where]) == 0
    listed = capsys.readouterr().out
    assert "team-r" in listed and key not in listed

    async def stored_values() -> list[bytes]:
        redis = Redis.from_url(redis_server.url)
        try:
            return [await redis.dump(k) or b"" for k in await redis.keys("di:apikey*")]
        finally:
            await redis.aclose()

    assert all(key.encode() not in v for v in asyncio.run(stored_values()))  # hashed only
    live: Stack = make_stack(edit=edit)
    c = client(live, key)
    raw = c.chat.completions.with_raw_response.create(model="m", messages=user_msg())
    assert raw.headers["X-DI-Tenant"] == "team-r"
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(
            model="m", messages=user_msg(), response_format={"type": "json_object"}
        )
    assert main(["keys", "revoke", *where, "team-r"]) == 0
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="m", messages=user_msg())
    assert main(["keys", "revoke", *where, "team-r"]) == 1
