"""tempauth: Swift's v1 auth with users from config and stateless signed tokens.

``GET /auth/v1.0`` with ``X-Auth-User: account:user`` and ``X-Auth-Key`` (or the
``X-Storage-User`` / ``X-Storage-Pass`` spellings) returns a token and the storage
URL. Tokens are HMAC-SHA256-signed (with ``[auth] secret``) descriptions of the user
and an expiry, so any proxy worker process on any host verifies them without shared
memory. The signature also covers the user's current key: changing a key revokes the
user's tokens.

Authorization follows tempauth: account owners (``.admin``) may do everything in
their account, ``.reseller_admin`` everything everywhere, other users only what
container ACLs grant (see :mod:`swiftlike.proxy.acl`); anonymous requests only what
``.r:`` referrer rules grant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from swiftlike.proxy.acl import parse_acl, referrer_allowed
from swiftlike.proxy.pipeline import (
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)

log = logging.getLogger("swiftlike.proxy.tempauth")

#: Swift all-in-one's tempauth users: "account:user" -> "key groups...".
DEFAULT_USERS = {
    "admin:admin": "admin .admin .reseller_admin",
    "test:tester": "testing .admin",
    "test:tester2": "testing2 .admin",
    "test:tester3": "testing3",
    "test2:tester2": "testing2 .admin",
}
TOKEN_PREFIX = "tk"
AUTH_PATHS = ("/auth/v1.0", "/auth/v1.0/", "/v1.0", "/v1.0/")
TOKEN_CACHE_MAX = 4096


@dataclass(frozen=True)
class User:
    account: str
    name: str
    key: str
    groups: tuple[str, ...]

    @property
    def full_name(self) -> str:
        return f"{self.account}:{self.name}"


def parse_users(table: dict[str, str]) -> dict[str, User]:
    """``{"account:user": "key .admin group2"}`` -> users; ValueError on a bad entry."""
    users = {}
    for name, spec in table.items():
        account, sep, user = name.partition(":")
        parts = str(spec).split()
        if not sep or not account or not user or not parts:
            raise ValueError(f"invalid tempauth user entry {name!r}")
        users[name] = User(account, user, parts[0], tuple(parts[1:]))
    return users


class TokenSigner:
    """Makes and checks ``AUTH_tk<payload>.<signature>`` tokens."""

    def __init__(self, secret: bytes, reseller_prefix: str = "AUTH_") -> None:
        self.secret = secret
        self.prefix = reseller_prefix + TOKEN_PREFIX

    def _signature(self, payload: bytes, key: str) -> str:
        mac = hmac.new(self.secret, payload + b"\x00" + key.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def make(self, user: User, expires: float) -> str:
        claims = {"u": user.full_name, "e": int(expires)}
        payload = base64.urlsafe_b64encode(
            json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
        return f"{self.prefix}{payload.decode()}.{self._signature(payload, user.key)}"

    def verify(self, token: str, users: dict[str, User], now: float | None = None
               ) -> tuple[User, int] | None:
        """The user and expiry of a valid, unexpired token; None when forged or expired."""
        if not token.startswith(self.prefix):
            return None
        body = token[len(self.prefix):]
        payload_text, dot, signature = body.partition(".")
        if not dot or not payload_text or len(token) > 1024:
            return None
        payload = payload_text.encode()
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
            user = users.get(claims["u"])
            expires = int(claims["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if user is None:
            return None
        if not hmac.compare_digest(self._signature(payload, user.key), signature):
            return None
        if expires <= (time.time() if now is None else now):
            return None
        return user, expires


def user_groups(user: User, reseller_prefix: str) -> list[str]:
    """What the user counts as in ACLs: ``account``, ``account:user``, owned account id."""
    groups = [user.account, user.full_name]
    for group in user.groups:
        if group == ".admin":
            groups.append(reseller_prefix + user.account)
        else:
            groups.append(group)
    if ".reseller_admin" in user.groups and reseller_prefix + user.account not in groups:
        groups.append(reseller_prefix + user.account)
    return groups


class TempAuth:
    """The middleware object: auth endpoint, token check, ``swift.authorize``."""

    def __init__(self, app: Handler, conf: dict) -> None:
        self.app = app
        auth_conf = conf.get("auth", {})
        cluster = conf.get("cluster", {})
        self.reseller_prefix = str(auth_conf.get("reseller_prefix", "AUTH_"))
        self.token_life = float(auth_conf.get("token_life", 86400))
        secret = auth_conf.get("secret")
        if not secret:
            # Derived from cluster-wide settings so every worker and host agrees.
            log.warning("no [auth] secret configured; deriving one from the hash path salts")
            secret = "tempauth:" + str(cluster.get("hash_path_prefix", "")) + ":" + str(
                cluster.get("hash_path_suffix", ""))
        self.signer = TokenSigner(str(secret).encode(), self.reseller_prefix)
        # [auth] users replaces the all-in-one defaults; [auth.extra_users] adds to them
        # (e.g. the image service's own account, generated by `swiftlike serve`).
        self.users = parse_users({**(auth_conf.get("users") or DEFAULT_USERS),
                                  **(auth_conf.get("extra_users") or {})})
        self.storage_url_scheme = str(auth_conf.get("storage_url_scheme", "default"))
        self._token_cache: dict[str, tuple[User, int]] = {}
        info_registry(conf).register_info("tempauth", {"account_acls": True})

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if req.path in AUTH_PATHS:
            return self.handle_auth(req)
        version, account, _container, _obj = req.split_path()
        if version != "v1" or not account:
            # Not an account request (e.g. /recon/cluster): no ACLs apply, but a valid
            # token still says who the caller is, so admin-only paths can check it.
            token = req.headers.get("X-Auth-Token") or req.headers.get("X-Storage-Token")
            found = self.check_token(token) if token else None
            if found is not None:
                user = found[0]
                req.environ["swift.identity"] = {
                    "user": user.full_name,
                    "account": user.account,
                    "groups": user_groups(user, self.reseller_prefix),
                    "reseller_admin": ".reseller_admin" in user.groups,
                }
            return await self.app(req)
        if req.environ.get("swift.authorize_override"):
            # tempurl/formpost (or a middleware's metadata lookup) already decided
            return await self.app(req)
        token = req.headers.get("X-Auth-Token") or req.headers.get("X-Storage-Token")
        if token:
            found = self.check_token(token)
            if found is None:
                return self._unauthorized(account)
            user = found[0]
            req.environ["swift.identity"] = {
                "user": user.full_name,
                "account": user.account,
                "groups": user_groups(user, self.reseller_prefix),
                "reseller_admin": ".reseller_admin" in user.groups,
            }
            if ".reseller_admin" in user.groups:
                req.environ["swift.reseller_request"] = True
        req.environ["swift.authorize"] = self.authorize
        return await self.app(req)

    def check_token(self, token: str) -> tuple[User, int] | None:
        now = time.time()
        cached = self._token_cache.get(token)
        if cached is not None:
            user, expires = cached
            if expires > now and self.users.get(user.full_name) == user:
                return cached
            self._token_cache.pop(token, None)
            return None
        found = self.signer.verify(token, self.users, now)
        if found is not None:
            if len(self._token_cache) >= TOKEN_CACHE_MAX:
                self._token_cache.clear()
            self._token_cache[token] = found
        return found

    def _storage_url(self, req: SwiftRequest, account: str) -> str:
        scheme = req.headers.get("X-Forwarded-Proto", req.scheme)
        if self.storage_url_scheme != "default":
            scheme = self.storage_url_scheme
        return f"{scheme}://{req.host}/v1/{self.reseller_prefix}{account}"

    def handle_auth(self, req: SwiftRequest) -> SwiftResponse:
        if req.method not in ("GET", "HEAD"):
            return error_response(405, headers={"Allow": "GET, HEAD"})
        name = req.headers.get("X-Auth-User") or req.headers.get("X-Storage-User")
        key = req.headers.get("X-Auth-Key") or req.headers.get("X-Storage-Pass")
        token = req.headers.get("X-Auth-Token") or req.headers.get("X-Storage-Token")
        if not name and not key and token:
            return self._token_details(req, token)
        user = self.users.get(name or "")
        if user is None or key is None or not hmac.compare_digest(
                user.key.encode(), key.encode()):
            # as Swift's: the realm is the account part of the user name
            realm = (name or "").partition(":")[0] if name and ":" in name else "unknown"
            return error_response(401, "Invalid user or key",
                                  headers={"Www-Authenticate": f'Swift realm="{realm}"'})
        expires = time.time() + self.token_life
        token = self.signer.make(user, expires)
        return self._auth_answer(req, user, token, expires)

    def _auth_answer(self, req: SwiftRequest, user: User, token: str, expires: float
                     ) -> SwiftResponse:
        url = self._storage_url(req, user.account)
        body = json.dumps({"storage": {"default": "local", "local": url}}).encode()
        return SwiftResponse(200, {
            "X-Auth-Token": token,
            "X-Storage-Token": token,
            "X-Storage-Url": url,
            "X-Auth-Token-Expires": str(max(0, int(expires - time.time()))),
            "X-Auth-Groups": ",".join(user_groups(user, self.reseller_prefix) + [
                g for g in user.groups if g == ".admin"]),
            "Content-Type": "application/json; charset=utf-8",
        }, body)

    def _token_details(self, req: SwiftRequest, token: str) -> SwiftResponse:
        """Token introspection for sibling services (the image API): who is this?"""
        found = self.check_token(token)
        if found is None:
            return error_response(401, "Invalid or expired token")
        user, expires = found
        return self._auth_answer(req, user, token, expires)

    def _unauthorized(self, account: str) -> SwiftResponse:
        return error_response(401, headers={"Www-Authenticate": f'Swift realm="{account}"'})

    def denied(self, req: SwiftRequest) -> SwiftResponse:
        if req.environ.get("swift.identity"):
            return error_response(403)
        account = req.split_path()[1] or "unknown"
        return self._unauthorized(account)

    @staticmethod
    def _account_acl_level(env: dict, groups: list[str]) -> str | None:
        """The strongest X-Account-Access-Control level naming one of the groups."""
        acl = env.get("swift.account_acl")
        if not acl or not groups:
            return None
        names = set(groups)
        for level in ("admin", "read-write", "read-only"):
            if names.intersection(acl.get(level, ())):
                return level
        return None

    def authorize(self, req: SwiftRequest) -> SwiftResponse | None:
        """None when allowed; 401 (anonymous) or 403 (authenticated) otherwise.

        Controllers call it first without ``swift.acl``; on a denial they load the
        container ACLs into ``req.environ["swift.acl"]`` and call it again.
        """
        _version, account, container, obj = req.split_path()
        env = req.environ
        env["swift.owner"] = False
        if not account or not account.startswith(self.reseller_prefix):
            return self.denied(req)
        identity: dict[str, Any] | None = env.get("swift.identity")
        groups = identity["groups"] if identity else []
        if identity and identity["reseller_admin"]:
            env["swift.owner"] = True
            return None
        if account in groups and (req.method not in ("PUT", "DELETE") or container):
            env["swift.owner"] = True
            return None
        if req.method == "OPTIONS":
            return None
        level = self._account_acl_level(env, groups)
        reading = req.method in ("GET", "HEAD")
        if level == "admin":
            env["swift.owner"] = True
            return None
        if level == "read-write" and (reading or container):
            # not an owner: the container controller drops any ACL or sync header it
            # sends, unheard, as Swift does (swift.owner stays False)
            return None
        if level == "read-only" and reading:
            return None
        acl = env.get("swift.acl")
        if not acl or not container:
            return self.denied(req)
        if not obj and not reading:
            return self.denied(req)  # only owners change containers
        referrers, acl_groups = parse_acl(acl["read"] if reading else acl["write"])
        if reading and referrer_allowed(req.headers.get("Referer"), referrers):
            if obj or ".rlistings" in acl_groups:
                return None
            return self.denied(req)
        if not identity:
            return self.denied(req)
        if any(group in acl_groups for group in groups if not group.startswith(".")):
            return None
        return self.denied(req)


def make_middleware(app: Handler, conf: dict) -> Handler:
    return TempAuth(app, conf)
