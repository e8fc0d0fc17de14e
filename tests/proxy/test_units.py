"""Unit tests: pipeline plumbing, constraints, token signing, ACL parsing/authorization."""

from __future__ import annotations

import time

import pytest

from swiftlike.common.constraints import (
    Limits,
    check_container_name,
    check_delete_headers,
    check_listing_params,
    check_metadata,
    check_object_name,
    check_utf8,
)
from swiftlike.proxy.acl import clean_acl, parse_acl, referrer_allowed
from swiftlike.proxy.base_controller import best_status, forward_headers
from swiftlike.proxy.node_pool import ErrorLimiter
from swiftlike.proxy.pipeline import (
    SwiftRequest,
    SwiftResponse,
    build_pipeline,
    error_response,
    info_registry,
)
from swiftlike.proxy.tempauth import TempAuth, TokenSigner, parse_users

LIMITS = Limits()


# -- pipeline -------------------------------------------------------------------------
async def test_pipeline_order_subrequest_and_body_wrapping():
    seen = []

    async def core(req: SwiftRequest) -> SwiftResponse:
        seen.append((req.method, req.path, await req.read_body()))
        return SwiftResponse(200, {"X-Core": "1"}, b"abc")

    async def gen():
        yield b"he"
        yield b"llo"

    def make_outer(app, conf):
        info_registry(conf).register_info("outer", {"x": 1})

        async def outer(req):
            if req.path == "/sub":
                sub = req.make_subrequest("PUT", "/v1/a/c/o", body=gen(),
                                          headers={"Content-Length": "5"})
                assert sub.environ["swift.subrequest"] is True
                resp = await app(sub)
            else:
                resp = await app(req)

            async def upper(stream):
                async for chunk in stream:
                    yield chunk.upper()
            resp.body = upper(resp.iter_body())
            return resp
        return outer

    import sys
    import types
    module = types.ModuleType("tests_fake_mw")
    module.make_middleware = make_outer
    sys.modules["tests_fake_mw"] = module
    conf: dict = {}
    handler = build_pipeline(core, conf, ["tests_fake_mw.x"] if False else [])
    assert handler is core
    mod2 = types.ModuleType("fake_pkg.mw")
    mod2.make_middleware = make_outer
    sys.modules["fake_pkg.mw"] = mod2
    sys.modules.setdefault("fake_pkg", types.ModuleType("fake_pkg"))
    handler = build_pipeline(core, conf, ["fake_pkg.mw"])
    resp = await handler(SwiftRequest("GET", "/sub"))
    assert await resp.read() == b"ABC"
    assert seen == [("PUT", "/v1/a/c/o", b"hello")]
    assert info_registry(conf).sections() == {"outer": {"x": 1}}


def test_split_path_keeps_object_slashes_and_empties():
    assert SwiftRequest("GET", "/v1/a/c/o/with/slash").split_path() == (
        "v1", "a", "c", "o/with/slash")
    assert SwiftRequest("GET", "/v1/a").split_path() == ("v1", "a", None, None)
    assert SwiftRequest("GET", "/v1/a//o").split_path() == ("v1", "a", "", "o")


def test_error_response_is_swift_style_and_escaped():
    resp = error_response(404, "<script>")
    assert resp.status == 404
    assert resp.body == b"<html><h1>Not Found</h1><p>&lt;script&gt;</p></html>"


def test_best_status_quorum_rules():
    assert best_status([201, 201, 503], 2) == 201
    assert best_status([201, 503, 503], 2) == 503
    assert best_status([204, 404, 404], 2) == 404
    assert best_status([409, 409, 204], 2) == 409


def test_error_limiter_suppresses_then_forgets():
    limiter = ErrorLimiter(interval=60, limit=2)
    node = {"ip": "127.0.0.1", "port": 1, "device": "d1"}
    for _ in range(3):
        limiter.error(node)
    assert limiter.is_limited(node)
    assert not limiter.is_limited(node, now=time.monotonic() + 61)


# -- constraints ----------------------------------------------------------------------
def test_name_checks():
    assert check_container_name("c" * 256, LIMITS) is None
    assert "longer than 256" in check_container_name("c" * 257, LIMITS)
    assert check_container_name("..", LIMITS)
    assert check_container_name(".", LIMITS)
    assert check_object_name("o" * 1024, LIMITS) is None
    assert check_object_name("o" * 1025, LIMITS)
    # characters, as Swift's proxy counts them: 1,024 "é" are 2,048 bytes
    assert check_object_name("\u00e9" * 1024, LIMITS) is None
    assert check_object_name("\u00e9" * 1025, LIMITS)
    assert not check_utf8("a\x00b")
    assert not check_utf8(b"\xff".decode("utf-8", "surrogateescape"))
    assert check_utf8("caf\u00e9")


def test_metadata_limits():
    assert check_metadata({"X-Object-Meta-A": "b"}, "object", LIMITS) is None
    assert check_metadata({"X-Object-Meta-": "b"}, "object", LIMITS)
    assert check_metadata({"X-Object-Meta-" + "n" * 129: "b"}, "object", LIMITS)
    assert check_metadata({"X-Object-Meta-N": "v" * 257}, "object", LIMITS)
    many = {f"X-Object-Meta-{i}": "v" for i in range(91)}
    assert "Too many" in check_metadata(many, "object", LIMITS)
    big = {f"X-Object-Meta-{i:03d}": "v" * 250 for i in range(17)}
    assert "Total metadata" in check_metadata(big, "object", LIMITS)
    # other types' metadata does not count
    assert check_metadata({"X-Container-Meta-" + "n" * 200: "b"}, "object", LIMITS) is None


def test_delete_headers_and_listing_params():
    err, at = check_delete_headers({"X-Delete-After": "10"}, now=1000.0)
    assert err is None and at == "1010"
    assert check_delete_headers({"X-Delete-After": "x"})[0]
    assert check_delete_headers({"X-Delete-At": "5"}, now=1000.0)[0]
    # as Swift: a fractional X-Delete-At is refused, not truncated
    assert check_delete_headers({"X-Delete-At": "2000.5"}, now=1000.0) == (
        "Non-integer X-Delete-At", None)
    assert check_delete_headers({"X-Delete-At": " 2000 "}, now=1000.0) == (None, "2000")
    # as Swift: beyond ten digits is clamped (a huge value once broke the queue's msgpack
    # after the object was written, answering 503 for a stored change)
    assert check_delete_headers({"X-Delete-At": "1" + "0" * 29}, now=1000.0) == (
        None, "9999999999")
    assert check_delete_headers({"X-Delete-After": "1" + "0" * 20}, now=1000.0) == (
        None, "9999999999")
    assert check_listing_params({"limit": "10001"}, 10000) == ("Maximum limit is 10000", 412)
    assert check_listing_params({"limit": "10"}, 10000)[0] is None


# -- tokens ---------------------------------------------------------------------------
USERS = parse_users({"test:tester": "testing .admin", "test:tester3": "testing3"})


def test_token_roundtrip_forgery_expiry_and_key_rotation():
    signer = TokenSigner(b"secret")
    token = signer.make(USERS["test:tester"], time.time() + 60)
    assert token.startswith("AUTH_tk")
    user, _ = signer.verify(token, USERS)
    assert user.full_name == "test:tester"
    # another process with the same secret accepts it; another secret does not
    assert TokenSigner(b"secret").verify(token, USERS) is not None
    assert TokenSigner(b"other").verify(token, USERS) is None
    # tampering with the payload (claiming another user) breaks the signature
    forged = signer.make(USERS["test:tester3"], time.time() + 60)
    head3, sig3 = forged.split(".")
    head1, sig1 = token.split(".")
    assert signer.verify(f"{head3}.{sig1}", USERS) is None
    assert signer.verify(f"{head1}.{sig3}", USERS) is None
    assert signer.verify("AUTH_tkgarbage", USERS) is None
    expired = signer.make(USERS["test:tester"], time.time() - 1)
    assert signer.verify(expired, USERS) is None
    rotated = parse_users({"test:tester": "newkey .admin"})
    assert signer.verify(token, rotated) is None


# -- ACLs -----------------------------------------------------------------------------
def test_acl_parse_and_clean():
    assert parse_acl(".r:*,.rlistings,test:tester3, test2") == (
        ["*"], [".rlistings", "test:tester3", "test2"])
    assert clean_acl("X-Container-Read", " .ref:example.com , a:b") == ".r:example.com,a:b"
    with pytest.raises(ValueError):
        clean_acl("X-Container-Write", ".r:*")
    with pytest.raises(ValueError):
        clean_acl("X-Container-Read", ".bogus:x")
    with pytest.raises(ValueError):
        clean_acl("X-Container-Read", ".r:")


def test_referrer_rules():
    assert referrer_allowed("http://a.example.com/x", [".example.com"])
    assert not referrer_allowed("http://a.example.com/x", [".example.com", "-a.example.com"])
    assert referrer_allowed(None, ["*"])
    assert not referrer_allowed("http://evil.org/", ["example.com"])


def _authz(path, method="GET", identity_user=None, acl=None, headers=None):
    auth = TempAuth(None, {"auth": {"secret": "s", "users": {
        "test:tester": "testing .admin", "test:tester3": "testing3",
        "test2:tester2": "testing2 .admin", "admin:admin": "admin .reseller_admin"}}})
    req = SwiftRequest(method, path, headers=headers or {})
    if identity_user:
        user = auth.users[identity_user]
        from swiftlike.proxy.tempauth import user_groups
        req.environ["swift.identity"] = {
            "user": user.full_name, "account": user.account,
            "groups": user_groups(user, "AUTH_"),
            "reseller_admin": ".reseller_admin" in user.groups}
    if acl is not None:
        req.environ["swift.acl"] = acl
    denial = auth.authorize(req)
    return None if denial is None else denial.status


def test_authorize_rules():
    assert _authz("/v1/AUTH_test/c/o", "PUT", "test:tester") is None
    assert _authz("/v1/AUTH_test", "PUT", "test:tester") == 403  # account PUT: reseller only
    assert _authz("/v1/AUTH_test/c/o", "GET", "test2:tester2") == 403
    assert _authz("/v1/AUTH_test/c/o", "GET") == 401
    assert _authz("/v1/AUTH_test/c/o", "GET", "admin:admin") is None
    assert _authz("/v1/AUTH_test/c", "PUT", "test:tester3") == 403
    read = {"read": "test2:tester2", "write": ""}
    assert _authz("/v1/AUTH_test/c/o", "GET", "test2:tester2", read) is None
    assert _authz("/v1/AUTH_test/c", "GET", "test2:tester2", read) is None
    assert _authz("/v1/AUTH_test/c/o", "PUT", "test2:tester2", read) == 403
    public = {"read": ".r:*", "write": ""}
    assert _authz("/v1/AUTH_test/c/o", "GET", None, public) is None
    assert _authz("/v1/AUTH_test/c", "GET", None, public) == 401  # listing needs .rlistings
    assert _authz("/v1/AUTH_test/c", "GET", None, {"read": ".r:*,.rlistings"}) is None
    write = {"read": "", "write": "test:tester3"}
    assert _authz("/v1/AUTH_test/c/o", "PUT", "test:tester3", write) is None
    assert _authz("/v1/AUTH_test/c", "POST", "test:tester3", write) == 403


def test_clients_cannot_route_the_updates_of_their_writes():
    """X-Container-*/X-Account-* name the database replicas a storage node updates after
    a write; only the proxy sets them. A client's would send updates where it likes."""
    req = SwiftRequest("PUT", "/v1/AUTH_a/c/o", headers={
        "X-Container-Host": "10.9.9.9:6201", "X-Container-Partition": "1",
        "X-Container-Device": "sda", "X-Account-Host": "10.9.9.9:6201",
        "X-Account-Partition": "1", "X-Account-Device": "sda",
        "X-Object-Meta-Kept": "yes"})
    forwarded = forward_headers(req)
    assert not [h for h in forwarded if h.lower().startswith(("x-container-", "x-account-"))]
    assert forwarded["X-Object-Meta-Kept"] == "yes"
