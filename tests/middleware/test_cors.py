"""CORS preflights and response headers on containers, with raw aiohttp requests."""

from __future__ import annotations

from tests.middleware.helpers import Account

ORIGIN = "https://app.example.com"


def make_cors_container(account: Account, name: str, origin: str = ORIGIN) -> None:
    conn = account.conn()
    conn.put_container(name, headers={
        "X-Container-Meta-Access-Control-Allow-Origin": f"{origin} https://other.example",
        "X-Container-Meta-Access-Control-Max-Age": "600",
        "X-Container-Meta-Access-Control-Expose-Headers": "X-Custom-Thing",
    })
    conn.put_object(name, "obj", b"cors", headers={"X-Object-Meta-Flavour": "mint"})


async def test_strict_cors_mode_in_info(swift_cluster, http) -> None:
    async with http.get(swift_cluster.proxy_url + "/info") as resp:
        assert (await resp.json())["swift"]["strict_cors_mode"] is True


async def test_preflight_allowed_and_refused(account, unique_name, http) -> None:
    make_cors_container(account, unique_name)
    url = f"{account.url}/{unique_name}/obj"
    async with http.options(url, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "x-auth-token, content-type"}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert resp.headers["Access-Control-Max-Age"] == "600"
        assert "PUT" in resp.headers["Access-Control-Allow-Methods"].split(", ")
        assert resp.headers["Access-Control-Allow-Headers"] == "x-auth-token, content-type"
    async with http.options(url, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}) as resp:
        assert resp.status == 401
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.options(url, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "BREW"}) as resp:
        assert resp.status == 401
    # a plain OPTIONS (no Origin) lists the allowed methods
    async with http.options(url) as resp:
        assert resp.status == 200
        assert "GET" in resp.headers["Allow"]
    # a container without CORS settings refuses every preflight
    account.conn().put_container(unique_name + "-plain")
    async with http.options(f"{account.url}/{unique_name}-plain/x", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "GET"}) as resp:
        assert resp.status == 401


async def test_actual_request_headers(account, unique_name, http) -> None:
    make_cors_container(account, unique_name)
    url = f"{account.url}/{unique_name}/obj"
    async with http.get(url, headers=account.headers(Origin=ORIGIN)) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        exposed = resp.headers["Access-Control-Expose-Headers"].split(", ")
        for name in ("etag", "x-trans-id", "x-object-meta-flavour", "x-custom-thing"):
            assert name in exposed
    # strict mode: an origin the container does not allow gets no CORS headers
    async with http.get(url, headers=account.headers(Origin="https://evil.example")) as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers
    # no Origin, no CORS headers
    async with http.get(url, headers=account.headers()) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_wildcard_origin(account, unique_name, http) -> None:
    conn = account.conn()
    conn.put_container(unique_name,
                       headers={"X-Container-Meta-Access-Control-Allow-Origin": "*"})
    conn.put_object(unique_name, "o", b"x")
    async with http.head(f"{account.url}/{unique_name}/o",
                         headers=account.headers(Origin="https://any.example")) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    async with http.options(f"{account.url}/{unique_name}/o", headers={
            "Origin": "https://any.example", "Access-Control-Request-Method": "DELETE"}
                            ) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
