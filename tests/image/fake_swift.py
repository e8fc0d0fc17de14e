"""A minimal Swift-API stand-in, used ONLY while the real cluster cannot start.

It speaks the subset the image service uses (v1 auth + token introspection, container
PUT/GET listing, object PUT/GET with Range/HEAD/DELETE, /info) and keeps objects as
files in a temp dir. The image tests prefer the real `swift_cluster`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

USERS = {
    "test:tester": ("testing", "test", [".admin"]),
    "test2:tester2": ("testing2", "test2", [".admin"]),
    "admin:admin": ("admin", "admin", [".admin", ".reseller_admin"]),
}


def make_fake_swift(root: Path) -> web.Application:
    tokens: dict[str, str] = {}
    app = web.Application(client_max_size=1024**2)

    def obj_path(account: str, container: str, name: str) -> Path:
        return root / account / container / quote(name, safe="")

    async def auth(request: web.Request) -> web.Response:
        user = request.headers.get("X-Auth-User")
        token = request.headers.get("X-Auth-Token")
        if user is None and token in tokens:
            user = tokens[token]
        elif user is None or USERS.get(user, ("",))[0] != request.headers.get("X-Auth-Key"):
            return web.Response(status=401)
        else:
            token = "AUTH_tk" + secrets.token_hex(8)
            tokens[token] = user
        _key, account, groups = USERS[user]
        url = f"http://{request.host}/v1/AUTH_{account}"
        return web.Response(headers={
            "X-Auth-Token": token, "X-Storage-Url": url, "X-Auth-Token-Expires": "3600",
            "X-Auth-Groups": ",".join([account, user, f"AUTH_{account}", *groups])})

    def check(request: web.Request) -> str:
        user = tokens.get(request.headers.get("X-Auth-Token", ""))
        account = request.match_info["account"]
        if user is None:
            raise web.HTTPUnauthorized()
        if f"AUTH_{USERS[user][1]}" != account and ".reseller_admin" not in USERS[user][2]:
            raise web.HTTPForbidden()
        return account

    async def container(request: web.Request) -> web.StreamResponse:
        account = check(request)
        path = root / account / request.match_info["container"]
        if request.method == "PUT":
            existed = path.exists()
            path.mkdir(parents=True, exist_ok=True)
            return web.Response(status=202 if existed else 201)
        if not path.exists():
            raise web.HTTPNotFound()
        prefix = request.query.get("prefix", "")
        marker = request.query.get("marker", "")
        from urllib.parse import unquote
        names = sorted(unquote(p.name) for p in path.iterdir() if not p.name.endswith(".meta"))
        rows = [{"name": n} for n in names if n.startswith(prefix) and n > marker][:10000]
        return web.json_response(rows)

    async def obj(request: web.Request) -> web.StreamResponse:
        account = check(request)
        cont, name = request.match_info["container"], request.match_info["obj"]
        path = obj_path(account, cont, name)
        if request.method == "PUT":
            if not path.parent.exists():
                raise web.HTTPNotFound()
            tmp = path.with_suffix(".tmp")
            md5 = hashlib.md5()
            with tmp.open("wb") as fh:
                async for chunk in request.content.iter_chunked(65536):
                    md5.update(chunk)
                    fh.write(chunk)
            if not request.content.is_eof() or request.content.exception():
                tmp.unlink()
                raise web.HTTPBadRequest()
            tmp.replace(path)
            return web.Response(status=201, headers={"ETag": md5.hexdigest()})
        if not path.exists():
            raise web.HTTPNotFound()
        if request.method == "DELETE":
            path.unlink()
            return web.Response(status=204)
        size = path.stat().st_size
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(size)})
        start, end = 0, size
        rng = request.headers.get("Range")
        if rng:
            first, _, last = rng.split("=", 1)[1].partition("-")
            start = int(first)
            end = min(int(last) + 1, size) if last else size
        resp = web.StreamResponse(status=206 if rng else 200)
        resp.content_length = end - start
        await resp.prepare(request)
        with path.open("rb") as fh:
            fh.seek(start)
            left = end - start
            while left:
                data = fh.read(min(left, 65536))
                left -= len(data)
                await resp.write(data)
        return resp

    async def info(_request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"swift": {}}), content_type="application/json")

    app.router.add_get("/auth/v1.0", auth)
    app.router.add_get("/info", info)
    app.router.add_route("*", "/v1/{account}/{container}", container)
    app.router.add_route("*", "/v1/{account}/{container}/{obj:.+}", obj)
    return app
