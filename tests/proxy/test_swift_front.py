"""SwiftFront: the serving proxy hands Swift API requests to the pipeline without
aiohttp's router, and everything a mounted API could own to the application.

The routing claim is checked against aiohttp's own router (hypothesis over paths that
look like the mounted prefix and percent-encodings of it); the Expect handling that
the application used to do is checked on the real all-in-one server with a raw socket,
since HTTP clients hide the interim 100 answer.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import unquote

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from swiftlike.proxy.server import SwiftFront, mount_apis


async def _catch_all(request: web.Request) -> web.StreamResponse:
    return web.Response(text="swift")


async def _versions(request: web.Request) -> web.StreamResponse:
    return web.Response(text="versions")


@web.middleware
async def _image_middleware(request: web.Request, handler):
    return await handler(request)


def _app_like_the_all_in_one() -> tuple[web.Application, tuple[str, ...]]:
    """Catch-all plus the image API mounted the way the all-in-one proxy mounts it."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _catch_all)
    image = web.Application(middlewares=[_image_middleware])
    for path in ("/", "/v2/images", "/v2/images/{image_id}", "/v2/images/{image_id}/file",
                 "/v2/schemas/image"):
        image.router.add_route("*", path, _versions)
    mounted = mount_apis(app, {"/image": image}, {"/image": _versions})
    app.freeze()
    return app, mounted


def _request(method: str, target: str, app: web.Application | None = None) -> web.Request:
    """A request whose path is ``target`` as sent, as aiohttp's parser keeps it
    (make_mocked_request alone would read ``//x`` as a host name)."""
    request = make_mocked_request(method, "/", app=app)
    return request.clone(rel_url=URL.build(path=target, encoded=True))


_SEGMENTS = st.sampled_from(["image", "imag", "images", "imagex", "Image", "%69mage",
                             "image%2Fv2", "%2F", "v2", "images", "v1", "AUTH_test", "c",
                             "o", "", ".", "..", "%25", "info", "%2Fimage"])
_PATHS = st.lists(_SEGMENTS, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
_APP, _MOUNTED = _app_like_the_all_in_one()


@settings(max_examples=300, deadline=None)
@given(path=_PATHS, method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE"]))
def test_a_request_kept_from_the_router_is_one_the_router_gives_the_catch_all(path, method):
    request = _request(method, path, _APP)
    match_info = asyncio.run(_APP.router.resolve(request))
    goes_to_router = request.path.startswith(_MOUNTED)
    if not goes_to_router:
        assert match_info.handler is _catch_all, (path, match_info)
    # and the prefix test is about the decoded path, which the router's can only lag
    if match_info.handler is not _catch_all:
        assert goes_to_router
        assert unquote(path).startswith("/image")


async def test_only_paths_that_begin_like_a_mounted_api_reach_the_application():
    seen = []

    async def app_handler(request):
        seen.append(("app", request.path))
        return web.Response(text="app")

    async def pipeline(req):
        seen.append(("swift", req.path))  # ("//image" comes back re-quoted: not checked)
        from swiftlike.proxy.pipeline import SwiftResponse
        return SwiftResponse(200, body=b"swift")

    front = SwiftFront(app_handler, pipeline, 60.0, mounted=("/image",))
    for path in ("/image", "/image/v2/images", "/imagex", "/v1/AUTH_test/image",
                 "/auth/v1.0", "//image"):
        await front(_request("GET", path))
    assert [owner for owner, _ in seen] == ["app", "app", "app", "swift", "swift", "swift"]


# ---- over the real all-in-one server ---------------------------------------------------


def _token(cluster) -> str:
    r = requests.get(cluster.auth_url, headers={"X-Auth-User": cluster.user,
                                                "X-Auth-Key": cluster.key}, timeout=10)
    assert r.status_code == 200
    return r.headers["X-Auth-Token"]


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _put_head(cluster, token: str, path: str, length: int, expect: str) -> bytes:
    return (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{cluster.port}\r\n"
            f"X-Auth-Token: {token}\r\nContent-Length: {length}\r\n"
            f"Expect: {expect}\r\n\r\n").encode()


def test_expect_100_continue_is_answered_before_the_body_is_sent(swift_cluster,
                                                                 unique_name):
    token = _token(swift_cluster)
    container = f"/v1/AUTH_test/{unique_name}"
    r = requests.put(swift_cluster.proxy_url + container,
                     headers={"X-Auth-Token": token}, timeout=10)
    assert r.status_code in (201, 202)
    body = b"sent only after 100 Continue"
    with socket.create_connection(("127.0.0.1", swift_cluster.port), timeout=10) as sock:
        sock.sendall(_put_head(swift_cluster, token, f"{container}/obj", len(body),
                               "100-continue"))
        interim = _read_head(sock)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        sock.sendall(body)
        final = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):] or _read_head(sock)
        assert final.startswith(b"HTTP/1.1 201"), final
    got = requests.get(f"{swift_cluster.proxy_url}{container}/obj",
                       headers={"X-Auth-Token": token}, timeout=10)
    assert got.status_code == 200 and got.content == body


def test_an_unknown_expectation_is_refused_with_417_and_nothing_is_stored(swift_cluster,
                                                                           unique_name):
    token = _token(swift_cluster)
    container = f"/v1/AUTH_test/{unique_name}"
    requests.put(swift_cluster.proxy_url + container, headers={"X-Auth-Token": token},
                 timeout=10)
    with socket.create_connection(("127.0.0.1", swift_cluster.port), timeout=10) as sock:
        sock.sendall(_put_head(swift_cluster, token, f"{container}/obj", 3, "something"))
        answer = _read_head(sock)
    assert answer.startswith(b"HTTP/1.1 417"), answer
    got = requests.head(f"{swift_cluster.proxy_url}{container}/obj",
                        headers={"X-Auth-Token": token}, timeout=10)
    assert got.status_code == 404


@pytest.mark.parametrize("path, owner", [("/image", "image"), ("/image/v2/images", "image"),
                                         ("/imagefoo", "swift"), ("/info", "swift")])
def test_mounted_and_swift_paths_reach_their_own_api(swift_cluster, path, owner):
    r = requests.get(swift_cluster.proxy_url + path, timeout=10)
    # every answer of the Swift pipeline carries a transaction id (catch_errors)
    assert ("X-Trans-Id" in r.headers) == (owner == "swift"), (path, r.status_code,
                                                                dict(r.headers))
