"""Tenancy through the official SDK: two keys, every object route, CORS, governance, metrics."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis.asyncio import Redis

from router.config import RouterConfig
from router.context import RequestContext
from router.keys import KEYRING, OBJECTS
from router.objects import MemoryObjectStore
from router.sim import SimSettings
from router.tenants import ANONYMOUS, generated_name
from router.usage import Usage, tokens_used

from .conftest import RedisServer, Stack, start_stack, stop_stack

KEY_A, KEY_B, KEY_TEXT = "sk-team-a-0123456789", "sk-team-b-0123456789", "sk-text-only-01234"


def user(text: str = "hello") -> list[Any]:
    return [{"role": "user", "content": text}]


def with_server(config: RouterConfig, **fields: Any) -> RouterConfig:
    server = config.server.model_validate({**config.server.model_dump(), **fields})
    return config.model_copy(update={"server": server})


def two_keys(config: RouterConfig) -> RouterConfig:
    return with_server(
        config,
        api_keys=[
            {"key": KEY_A, "name": "team-a"},
            KEY_B,  # a plain string: a generated name
            {"key": KEY_TEXT, "name": "texter", "allowed_types": ["text"]},
        ],
    )


@pytest.fixture(scope="module")
def tenants() -> Iterator[Stack]:
    live = start_stack(edit=two_keys)
    yield live
    stop_stack(live)


def client(stack: Stack, key: str, **kwargs: Any) -> openai.OpenAI:
    made = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, **kwargs)
    stack.clients.append(made)
    return made


def test_plain_keys_get_stable_generated_names(tenants: Stack) -> None:
    raw = client(tenants, KEY_B).chat.completions.with_raw_response.create(
        model="m", messages=user()
    )
    assert raw.headers["X-DI-Tenant"] == generated_name(KEY_B)
    assert KEY_B not in str(raw.headers) and generated_name(KEY_B).startswith("key-")
    assert generated_name(KEY_B) == generated_name(KEY_B) != generated_name(KEY_A)


def test_another_tenant_gets_404_on_every_object_route(tenants: Stack) -> None:
    a, b = client(tenants, KEY_A), client(tenants, KEY_B)
    stored = a.chat.completions.create(model="m", messages=user(), store=True)
    streamed = a.chat.completions.create(
        model="m", messages=user("stream me"), store=True, stream=True
    )
    stream_id = next(iter(streamed)).id
    for _ in streamed:
        pass
    response = a.responses.create(model="m", input="remember this")
    not_found = openai.NotFoundError
    for completion_id in (stored.id, stream_id):
        with pytest.raises(not_found):
            b.chat.completions.retrieve(completion_id)
        with pytest.raises(not_found):
            b.chat.completions.update(completion_id, metadata={"taken": "yes"})
        with pytest.raises(not_found):
            b.chat.completions.messages.list(completion_id)
        with pytest.raises(not_found):
            b.chat.completions.delete(completion_id)
    with pytest.raises(not_found):
        b.responses.retrieve(response.id)
    with pytest.raises(not_found):
        b.responses.input_items.list(response.id)
    with pytest.raises(not_found):
        b.responses.cancel(response.id)
    with pytest.raises(not_found):
        b.responses.delete(response.id)
    with pytest.raises(not_found) as caught:
        b.responses.create(model="m", input="and then?", previous_response_id=response.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    listed_by_b = {c.id for c in b.chat.completions.list(limit=100)}
    assert not listed_by_b & {stored.id, stream_id}
    # The owner still has everything, untouched.
    listed_by_a = {c.id for c in a.chat.completions.list(limit=100)}
    assert {stored.id, stream_id} <= listed_by_a
    assert a.chat.completions.retrieve(stored.id).metadata in ({}, None)
    assert a.chat.completions.messages.list(stored.id).data[0].content == "hello"
    assert a.responses.retrieve(response.id).output_text
    assert a.responses.input_items.list(response.id).data
    follow = a.responses.create(model="m", input="and then?", previous_response_id=response.id)
    assert follow.previous_response_id == response.id
    assert a.chat.completions.delete(stored.id).deleted
    a.responses.delete(response.id)  # the SDK returns None for this one
    with pytest.raises(not_found):
        a.responses.retrieve(response.id)


def test_objects_without_keys_belong_to_the_one_anonymous_tenant(stack: Stack) -> None:
    made = stack.client().chat.completions.create(model="m", messages=user(), store=True)
    objects = stack.app[OBJECTS]
    assert stack.run(objects.get(ANONYMOUS, "chat", made.id)) is not None


async def test_object_routes_send_no_cors_unless_enabled(tenants: Stack) -> None:
    origin = {"Origin": "https://evil.example"}
    auth = {"Authorization": f"Bearer {KEY_A}", **origin}
    preflight = {**origin, "Access-Control-Request-Method": "DELETE"}
    async with aiohttp.ClientSession() as session:
        async with session.get(tenants.base_url + "/chat/completions", headers=auth) as listed:
            assert listed.status == 200
            assert "Access-Control-Allow-Origin" not in listed.headers
        async with session.options(
            tenants.base_url + "/responses/resp_x", headers=preflight
        ) as pre:
            assert "Access-Control-Allow-Origin" not in pre.headers
        body = {"model": "m", "messages": user()}
        async with session.post(
            tenants.base_url + "/chat/completions", headers=auth, json=body
        ) as made:
            assert made.headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_on_objects_can_be_enabled(make_stack: Any) -> None:
    live = make_stack(edit=lambda c: with_server(c, cors_objects=True))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            live.base_url + "/chat/completions", headers={"Origin": "https://app.example"}
        ) as listed,
    ):
        assert listed.headers["Access-Control-Allow-Origin"] == "*"


def test_allowed_types_refuse_other_types_with_403(tenants: Stack) -> None:
    texter = client(tenants, KEY_TEXT)
    assert texter.chat.completions.create(model="m", messages=user()).choices
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.PermissionDeniedError) as caught:
        texter.chat.completions.create(model="m", messages=user(), tools=[tool])  # type: ignore[list-item]
    assert caught.value.status_code == 403
    assert caught.value.code == "request_type_not_allowed"
    assert caught.value.response.headers["X-DI-Request-Type"] == "code"
    with pytest.raises(openai.PermissionDeniedError):
        texter.responses.create(model="m", input="x", text={"format": {"type": "json_object"}})
    assert KEY_TEXT not in caught.value.message


def test_allowed_backends_refuse_other_pools(make_stack: Any) -> None:
    live = make_stack(
        edit=lambda c: with_server(
            c, api_keys=[{"key": KEY_A, "name": "coders", "allowed_backends": ["sim-code"]}]
        )
    )
    coders = client(live, KEY_A)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        coders.chat.completions.create(model="m", messages=user())
    assert caught.value.code == "backend_not_allowed"


def test_unknown_backend_in_allowed_backends_is_a_config_error() -> None:
    from router.config import RouterConfig

    data = {
        "server": {"api_keys": [{"key": "k", "allowed_backends": ["nope"]}]},
        "backends": [{"name": "b", "replicas": [{"id": "r", "url": "http://h/v1"}]}],
        "routes": {"text": "b", "code": "b", "json": "b", "vision": "b"},
    }
    with pytest.raises(ValueError, match="unknown backends nope"):
        RouterConfig.model_validate(data)
    data["server"] = {"api_keys": [{"key": "k", "name": "x"}, {"key": "j", "name": "x"}]}
    with pytest.raises(ValueError, match="names must be unique"):
        RouterConfig.model_validate(data)
    data["server"] = {"redis_keys": True}
    with pytest.raises(ValueError, match="redis_keys needs"):
        RouterConfig.model_validate(data)
    data["server"] = {"api_keys": ["k", {"key": "k", "name": "x"}]}
    with pytest.raises(ValueError, match="must be distinct"):
        RouterConfig.model_validate(data)


async def test_wrong_keys_are_401_and_never_echoed(tenants: Stack) -> None:
    assert tenants.app[KEYRING].required
    bad = "sk-team-a-0123456780"
    with pytest.raises(openai.AuthenticationError) as caught:
        client(tenants, bad).chat.completions.create(model="m", messages=user())
    assert bad not in str(caught.value.body) and bad not in str(caught.value.response.headers)


def test_per_tenant_counters_and_app_label(tenants: Stack) -> None:
    a = client(tenants, KEY_A, default_headers={"X-Title": "Docs bot"})
    a.chat.completions.create(model="m", messages=user())
    url = tenants.base_url.removesuffix("/v1") + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    bot = {"tenant": "team-a", "app": "Docs bot"}
    assert ("di_tenant_requests_total", {**bot, "status": "200"}, 1.0) in samples
    kinds = {
        labels["kind"]
        for name, labels, value in samples
        if name == "di_tenant_tokens_total" and labels.items() >= bot.items() and value > 0
    }
    assert {"prompt", "completion"} <= kinds


def test_a_failed_store_write_is_told_not_silent(make_stack: Any) -> None:
    live = make_stack(objects=MemoryObjectStore(ttl=60, max_objects=1))
    c = live.client()
    first = c.chat.completions.with_raw_response.create(model="m", messages=user(), store=True)
    assert first.headers["X-DI-Store"] == "stored"
    second = c.chat.completions.with_raw_response.create(model="m", messages=user(), store=True)
    assert second.headers["X-DI-Store"] == "failed"
    assert second.parse().choices  # the answer itself is not lost
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.retrieve(second.parse().id)
    with c.chat.completions.with_streaming_response.create(
        model="m", messages=user(), store=True, stream=True
    ) as streamed:
        raw = b"".join(streamed.iter_bytes())
    assert raw.rstrip().endswith(b": x-di-store: failed")
    response = c.responses.with_raw_response.create(model="m", input="x")
    assert response.headers["X-DI-Store"] == "failed"


def test_usage_estimate_when_a_stream_reports_none() -> None:
    ctx = RequestContext.start("r", {})
    assert tokens_used(ctx, 400) == 0  # never reached a backend
    ctx.upstream_ms = 1.0
    ctx.streamed_events = 7
    assert tokens_used(ctx, 400) == 100 + 7
    ctx.usage = Usage(prompt_tokens=20, completion_tokens=5)
    assert tokens_used(ctx, 400) == 25


def test_objects_can_live_in_their_own_redis(make_stack: Any, redis_server: RedisServer) -> None:
    def edit(config: RouterConfig) -> RouterConfig:
        objects = config.objects.model_copy(update={"redis_url": SecretStr(redis_server.url)})
        return two_keys(config).model_copy(update={"objects": objects})

    live: Stack = make_stack(edit=edit)
    made = client(live, KEY_A).chat.completions.create(model="m", messages=user(), store=True)

    async def stored() -> list[str]:
        redis = Redis.from_url(redis_server.url, decode_responses=True)
        try:
            return sorted(str(k) for k in await redis.keys("di:*"))
        finally:
            await redis.aclose()

    keys = asyncio.run(stored())
    assert keys == ["di:idx:team-a:chat", f"di:obj:team-a:chat:{made.id}"]
    assert client(live, KEY_A).chat.completions.retrieve(made.id).id == made.id


def test_a_stream_the_client_cut_off_is_not_stored() -> None:
    """The store is inspected after the router stopped, which waits for every handler: no
    timing involved. A whole stream is stored; one the client left after its first event is not."""
    objects = MemoryObjectStore(ttl=60)
    live = start_stack(
        sim=SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=20), objects=objects
    )
    try:
        whole = live.client().chat.completions.create(
            model="m", messages=user(), store=True, stream=True, max_tokens=2
        )
        ids = [chunk.id for chunk in whole]  # read to the end: a whole stream
        kept = ids[0]
        host, port = live.base_url.removeprefix("http://").removesuffix("/v1").split(":")
        body = b'{"model": "m", "stream": true, "store": true, "max_tokens": 500,' + (
            b' "messages": [{"role": "user", "content": "a long one"}]}'
        )
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            received = b""
            while b"data: " not in received:
                received += sock.recv(4096)
        assert b"200 OK" in received
    finally:
        stop_stack(live)
    assert len(objects) == 1
    assert asyncio.run(objects.get(ANONYMOUS, "chat", kept)) is not None
