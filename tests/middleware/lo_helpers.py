"""Shared bits for the large-object, versioning and symlink end-to-end tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import aiohttp
from swiftclient.client import get_auth


@dataclass
class Api:
    """A storage URL and token, plus a tiny raw-HTTP helper over aiohttp."""

    url: str
    token: str

    async def request(self, method: str, path: str = "", *, data: bytes | None = None,
                      headers: dict[str, str] | None = None,
                      params: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        hdrs = {"X-Auth-Token": self.token, **(headers or {})}
        async with aiohttp.ClientSession() as session, session.request(
                method, f"{self.url}/{path}" if path else self.url, data=data,
                headers=hdrs, params=params, allow_redirects=False) as resp:
            body = await resp.read()
            return resp.status, dict(resp.headers), body


def api_for(cluster) -> Api:
    url, token = get_auth(cluster.auth_url, cluster.user, cluster.key)
    return Api(url, token)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
