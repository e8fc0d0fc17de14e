"""Who is calling: object-store (tempauth v1) tokens validated against the proxy.

Why ask the proxy: tokens are issued and signed by the proxy's tempauth; the image service
holds no secret of its own. Contract (see docs/image.md): ``GET <auth_url>`` with only
``X-Auth-Token`` answers 2xx with ``X-Storage-Url`` (whose last path part is the
account, our Glance "project") and ``X-Auth-Groups`` (``.reseller_admin`` makes a Glance
admin), or 401. When no groups come back we confirm the token by a ``HEAD`` on the
storage URL. Answers are cached for ``cache_seconds`` (bounded by the token's expiry).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import aiohttp

ADMIN_GROUP = ".reseller_admin"


@dataclass(frozen=True)
class Identity:
    """The caller: its project (object-store account), whether it is a Glance admin, and
    whether it may change its project's images (Glance's member role) or only read them
    (reader).

    Why a reader: an object-store user who does not own its account (no ``.admin``,
    so its groups lack the account id) may do nothing there without an ACL; the image
    API gives it no more than Glance gives a reader.
    """

    project: str
    user: str
    is_admin: bool
    token: str
    can_write: bool = True


class AuthError(Exception):
    """The token is missing, invalid or expired."""


class TokenValidator:
    """Validate X-Auth-Token values with the proxy, with a bounded in-memory cache."""

    def __init__(
        self,
        auth_url: str,
        *,
        admin_group: str = ADMIN_GROUP,
        cache_seconds: float = 60.0,
        cache_size: int = 10000,
    ) -> None:
        self.auth_url = auth_url
        self.admin_group = admin_group
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self._session

    async def validate(self, token: str | None) -> Identity:
        """The identity a token stands for; raises ``AuthError`` otherwise."""
        if not token:
            raise AuthError("This server could not verify that you are authorized")
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(token)
            return hit[1]
        identity, lifetime = await self._ask_proxy(token)
        self._cache[token] = (now + min(self.cache_seconds, lifetime), identity)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return identity

    async def _ask_proxy(self, token: str) -> tuple[Identity, float]:
        session = self._client()
        try:
            async with session.get(self.auth_url, headers={"X-Auth-Token": token}) as resp:
                if resp.status // 100 != 2:
                    raise AuthError("token rejected by the object store")
                storage_url = resp.headers.get("X-Storage-Url", "")
                groups_header = resp.headers.get("X-Auth-Groups")
                expires = resp.headers.get("X-Auth-Token-Expires")
            account = storage_url.rstrip("/").rsplit("/", 1)[-1]
            if not storage_url or not account:
                raise AuthError("the object store did not name the token's account")
            if groups_header is None:
                async with session.head(storage_url, headers={"X-Auth-Token": token}) as resp:
                    if resp.status in (401, 403):
                        raise AuthError("token rejected by the object store")
            groups = [g.strip() for g in (groups_header or "").split(",") if g.strip()]
        except aiohttp.ClientError as exc:
            raise AuthError(f"cannot reach the object store to check the token: {exc}") from exc
        user = next((g for g in groups if ":" in g), account)
        try:
            lifetime = float(expires) if expires else self.cache_seconds
        except ValueError:
            lifetime = self.cache_seconds
        is_admin = self.admin_group in groups
        # no groups answered: an older proxy, which cannot tell; the account id among
        # them: the account's owner
        can_write = groups_header is None or is_admin or account in groups
        identity = Identity(account, user, is_admin, token, can_write)
        return identity, max(lifetime, 0.0)
