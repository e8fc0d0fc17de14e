"""Middlewares that declare ``passes_through`` are gone past, not entered.

The mechanism (pipeline.Bypass) with made-up middlewares, then the default pipeline:
which middlewares a plain object read still enters, and that the others are entered
as soon as a request concerns them. Whether each feature still works behind its
predicate is what the feature tests (tests/middleware) check through the full pipeline.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest

from swiftlike.proxy.pipeline import (
    DEFAULT_PIPELINE,
    Bypass,
    SwiftRequest,
    SwiftResponse,
    build_pipeline,
)


def _fake_module(name: str, entered: list[str], passes=None) -> None:
    def make_middleware(app, conf):
        async def middleware(req):
            entered.append(name)
            resp = await app(req)
            resp.headers.add("X-Through", name)
            return resp
        return middleware

    module = types.ModuleType(name)
    module.make_middleware = make_middleware
    if passes is not None:
        module.passes_through = passes
    sys.modules[name] = module


@pytest.fixture()
def fakes() -> Iterator[list[str]]:
    entered: list[str] = []
    names = ["bypass_fake.a", "bypass_fake.b", "bypass_fake.c", "bypass_fake.d"]
    sys.modules["bypass_fake"] = types.ModuleType("bypass_fake")
    _fake_module(names[0], entered)
    _fake_module(names[1], entered, lambda req: "b" not in req.query)
    _fake_module(names[2], entered, lambda req: "c" not in req.query)
    _fake_module(names[3], entered)
    yield entered
    for name in [*names, "bypass_fake"]:
        sys.modules.pop(name, None)


async def _core(req: SwiftRequest) -> SwiftResponse:
    return SwiftResponse(200, {}, b"core")


@pytest.mark.parametrize(("query", "expected"), [
    ({}, ["a", "d"]),
    ({"b": "1"}, ["a", "b", "d"]),
    ({"c": "1"}, ["a", "c", "d"]),
    ({"b": "1", "c": "1"}, ["a", "b", "c", "d"]),
])
async def test_run_of_declaring_middlewares_is_one_bypass(fakes, query, expected):
    handler = build_pipeline(_core, {}, ["bypass_fake.a", "bypass_fake.b",
                                         "bypass_fake.c", "bypass_fake.d"])
    resp = await handler(SwiftRequest("GET", "/v1/a/c/o", query=query))
    assert fakes == [f"bypass_fake.{n}" for n in expected]
    # each entered middleware saw the response on its way back, innermost first
    assert resp.headers.getall("X-Through") == [f"bypass_fake.{n}"
                                                for n in reversed(expected)]
    assert await resp.read() == b"core"


async def test_entered_middleware_still_skips_the_rest_of_its_run(fakes):
    handler = build_pipeline(_core, {}, ["bypass_fake.b", "bypass_fake.c"])
    assert isinstance(handler, Bypass)
    assert len(handler.steps) == 2
    assert handler.after is _core
    await handler(SwiftRequest("GET", "/x", query={"b": "1"}))
    assert fakes == ["bypass_fake.b"]


async def _through_default_pipeline(method: str, path: str, **kwargs) -> list[str]:
    """The middlewares of the default pipeline a request enters, outermost first."""
    async def core(req: SwiftRequest) -> SwiftResponse:
        return SwiftResponse(201 if method == "PUT" else 200, {}, b"")

    handler = build_pipeline(core, {"auth": {"secret": "s"}}, DEFAULT_PIPELINE)
    auth = await handler(SwiftRequest("GET", "/auth/v1.0", headers={
        "X-Auth-User": "test:tester", "X-Auth-Key": "testing"}))
    headers = {"X-Auth-Token": auth.headers["X-Auth-Token"], **kwargs.pop("headers", {})}
    req = SwiftRequest(method, path, headers=headers, **kwargs)
    entered: list[str] = []

    def profiler(frame, event, _arg):
        # a middleware's handler is its module's function of the same name, or __call__
        code = frame.f_code
        if event != "call" or "swiftlike/proxy/" not in code.co_filename:
            return
        module = code.co_filename.rsplit("/", 1)[1][:-3]
        if module in DEFAULT_PIPELINE and code.co_name in (module, "__call__") \
                and module not in entered:
            entered.append(module)

    sys.setprofile(profiler)
    try:
        await handler(req)  # a temp URL without its other parameter gets a 401: fine
    finally:
        sys.setprofile(None)
    return entered


async def test_plain_object_read_enters_only_what_can_change_it():
    core_path = ["catch_errors", "gatekeeper", "tempauth", "slo", "dlo", "symlink",
                 "object_versioning"]
    for method in ("GET", "HEAD"):
        assert await _through_default_pipeline(method, "/v1/AUTH_test/c/o") == core_path


@pytest.mark.parametrize(("method", "path", "kwargs", "also"), [
    ("GET", "/v1/AUTH_test/c/o", {"headers": {"Origin": "http://example.com"}}, ["cors"]),
    ("GET", "/v1/AUTH_test/c/o", {"headers": {"X-Web-Mode": "true"}}, ["staticweb"]),
    ("GET", "/v1/AUTH_test/c/o", {"query": {"temp_url_sig": "x"}}, ["tempurl"]),
    ("GET", "/v1/AUTH_test/c", {}, ["tempurl", "ratelimit"]),
    ("PUT", "/v1/AUTH_test/c/o", {}, ["bulk", "copy", "container_quotas",
                                      "account_quotas", "versioned_writes"]),
])
async def test_requests_that_concern_a_middleware_enter_it(method, path, kwargs, also):
    names = await _through_default_pipeline(method, path, **kwargs)
    for name in also:
        assert name in names, (name, names)
