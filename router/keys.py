"""Typed keys for everything the application and each request carry."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from router.balancer import Balancer
from router.config import RouterConfig
from router.context import RequestContext
from router.dashboard import RecentErrors
from router.dispatch import Dispatcher
from router.lifecycle import Lifecycle
from router.limits import BodyParser
from router.metrics import Metrics
from router.objects import ObjectStore
from router.ratelimit import RateLimiter
from router.store import PrefixStore
from router.tenants import KeyRing
from router.tracing import RequestTracer
from router.watch import Watcher

CONFIG = web.AppKey("config", RouterConfig)
BALANCER = web.AppKey("balancer", Balancer)
STORE = web.AppKey("store", PrefixStore)
OBJECTS = web.AppKey("objects", ObjectStore)
SESSION = web.AppKey("session", aiohttp.ClientSession)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
METRICS = web.AppKey("metrics", Metrics)
WORKER = web.AppKey("worker", bool)  # one of the processes of `serve --workers N`
RECENT_ERRORS = web.AppKey("recent_errors", RecentErrors)
TRACER = web.AppKey("tracer", RequestTracer)
WATCHER = web.AppKey("watcher", Watcher)
CONTEXT = web.RequestKey("context", RequestContext)
# Headers every response starts with (CORS), built once from the config.
BASE_HEADERS = web.AppKey("base_headers", dict[str, str])
# Tenancy (router/governance.py): keys -> tenants, per-key limits, per-tenant counters.
KEYRING = web.AppKey("keyring", KeyRing)
LIMITER = web.AppKey("limiter", RateLimiter)
BODY_PARSER = web.AppKey("body_parser", BodyParser)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
