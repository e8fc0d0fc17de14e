"""Containers: create, list, stat, metadata, delete (409 when not empty).

Creating a container first makes sure its account exists (``account_autocreate``
creates it like Swift does for tempauth accounts), then writes every container
replica with the ``X-Account-*`` headers its server needs to report back to the
account listing.
"""

from __future__ import annotations

from multidict import CIMultiDict

from swiftlike.common.constraints import (
    check_container_name,
    check_listing_params,
    check_metadata,
    check_metadata_after,
)
from swiftlike.common.listing import negotiate_listing
from swiftlike.common.node_client import node_path
from swiftlike.common.timestamp import Timestamp
from swiftlike.proxy.acl import clean_acl
from swiftlike.proxy.base_controller import (
    Controller,
    client_headers,
    forward_headers,
    translate_remove_headers,
    update_headers,
)
from swiftlike.proxy.info import DEFAULT_POLICY
from swiftlike.proxy.pipeline import SwiftRequest, SwiftResponse, error_response

#: Container settings only its owner may see or set (Swift's swift_owner_headers): who
#: may read and write, where it syncs to and with which key, and the temp URL keys.
CONTAINER_OWNER_HEADERS = ("X-Container-Read", "X-Container-Write", "X-Container-Sync-Key",
                           "X-Container-Sync-To", "X-Container-Meta-Temp-URL-Key",
                           "X-Container-Meta-Temp-URL-Key-2")


def _drop_owner_settings(req: SwiftRequest) -> None:
    """A user allowed to write a container but not its owner (an account read-write
    ACL) sets its other settings, never the owner's: those are dropped unheard, as in
    Swift."""
    if not req.environ.get("swift.owner", True):
        for key in CONTAINER_OWNER_HEADERS:
            req.headers.popall(key, None)


def negotiated_listing(req: SwiftRequest) -> tuple[str, str] | SwiftResponse:
    """(format, Content-Type) of an account or container GET/HEAD, as Swift negotiates
    it; 406 when the Accept header takes none of them, 400 when it cannot be read."""
    try:
        found = negotiate_listing(req.query, req.headers.get("Accept"))
    except ValueError:
        return error_response(400, "Invalid Accept header")
    if found is None:
        return error_response(406)
    return found


def listing_answer_headers(req: SwiftRequest, out: CIMultiDict[str],
                           listing: tuple[str, str]) -> None:
    """What every listing answer says about its format: its type and, when no
    ``format=`` chose it, that it depends on Accept (so a cache does not hand one
    client's JSON to another's plain request), as Swift's."""
    out["Content-Type"] = listing[1]
    out["Accept-Ranges"] = "bytes"  # as Swift's account and container answers say
    if not req.query.get("format"):
        out["Vary"] = "Accept"


def listing_query(req: SwiftRequest, fmt: str) -> dict[str, str]:
    query = {k: v for k, v in req.query.items()
             if k in ("prefix", "delimiter", "marker", "end_marker", "limit", "reverse",
                      "path")}
    if not query.get("limit", "").isdigit():
        query.pop("limit", None)  # Swift ignores a limit that is not a number
    query["format"] = fmt
    return query


class ContainerController(Controller):
    server_type = "container"

    async def handle(self, req: SwiftRequest, account: str, container: str) -> SwiftResponse:
        method = req.method
        if method != "PUT" and await self.account_deleted(account):
            return error_response(404)  # as Swift: a deleted account's containers are gone
        if method in ("GET", "HEAD"):
            return await self.get_or_head(req, account, container)
        if method == "PUT":
            return await self.put(req, account, container)
        if method == "POST":
            return await self.post(req, account, container)
        if method == "DELETE":
            return await self.delete(req, account, container)
        return error_response(405, headers={"Allow": "GET, HEAD, PUT, POST, DELETE"})

    async def _acl(self, account: str, container: str) -> dict | None:
        info = await self.container_info(account, container)
        if info["status"] // 100 != 2:
            return None
        return {"read": info["read_acl"], "write": info["write_acl"]}

    async def get_or_head(self, req: SwiftRequest, account: str, container: str
                          ) -> SwiftResponse:
        denial = await self.authorize(req, lambda: self._acl(account, container))
        if denial is not None:
            return denial
        listing = negotiated_listing(req)
        if isinstance(listing, SwiftResponse):
            return listing
        query = None
        if req.method == "GET":
            message, status = check_listing_params(
                req.query, self.ctx.limits.container_listing_limit)
            if message:
                return error_response(status, message)
            query = listing_query(req, listing[0])
        part, nodes = self.ctx.ring.get_nodes(account, container)
        headers = forward_headers(req)
        headers["X-Backend-Server-Type"] = "container"
        if req.method == "HEAD":
            resp = await self.head_shared(
                ("c", account, container, headers.get("X-Newest", "")), part, nodes,
                lambda n: node_path(n, part, account, container), headers,
                since=req.environ.get("swift.arrival"))
        else:
            resp = await self.get_first(
                part, nodes, req.method, lambda n: node_path(n, part, account, container),
                headers, query,
            )
        if resp is None:
            return error_response(503)
        if resp.status == 404:
            return error_response(404)
        out = client_headers(resp.headers)
        out["X-Storage-Policy"] = DEFAULT_POLICY  # swift list --long shows it
        if resp.status // 100 == 2:
            listing_answer_headers(req, out, listing)
        if not req.environ.get("swift.owner", True):
            for key in CONTAINER_OWNER_HEADERS:
                out.popall(key, None)
        if req.method == "HEAD":
            length = int(resp.headers.get("Content-Length", 0) or 0)
            return SwiftResponse(resp.status, out, None, content_length=length)
        return SwiftResponse(resp.status, out, resp.body)

    def _check(self, req: SwiftRequest, container: str) -> SwiftResponse | None:
        message = check_container_name(container, self.ctx.limits)
        if message:
            return error_response(400, message)
        translate_remove_headers(req.headers, "container")
        message = check_metadata(req.headers, "container", self.ctx.limits)
        if message:
            return error_response(400, message)
        for header in ("X-Container-Read", "X-Container-Write"):
            if header in req.headers:
                try:
                    req.headers[header] = clean_acl(header, req.headers[header])
                except ValueError as exc:
                    return error_response(400, str(exc))
        return None

    async def ensure_account(self, req: SwiftRequest, account: str) -> SwiftResponse | None:
        """404 unless the account exists; autocreate it when configured."""
        info = await self.account_info(account)
        if info["status"] // 100 == 2:
            return None
        if info["status"] != 404:
            return error_response(503)
        if not self.ctx.account_autocreate:
            return error_response(404, "Account not found")
        part, nodes = self.ctx.ring.get_nodes(account)
        headers = {"X-Backend-Server-Type": "account", "X-Timestamp": Timestamp.now().internal}
        trans_id = req.environ.get("swift.trans_id")
        if trans_id:
            headers["X-Trans-Id"] = trans_id
        responses = await self.make_requests(
            part, nodes, "PUT", lambda n: node_path(n, part, account), lambda slot: headers)
        self.invalidate_info(account)
        resp = self.quorum_response(responses, len(nodes))
        if resp.status // 100 != 2:
            return error_response(503, "Could not create the account")
        return None

    def _account_update_headers(self, account: str, writers: list[dict]
                                ) -> list[dict[str, str]]:
        apart, anodes = self.ctx.ring.get_nodes(account)
        return update_headers(writers, anodes, apart, "Account")

    async def _write_replicas(self, req: SwiftRequest, method: str, account: str,
                              container: str, *, account_updates: bool) -> SwiftResponse:
        """Send a container write to every primary with one timestamp; quorum answer.

        PUT and DELETE also tell each container node which account node to update
        (creating or deleting a container changes the account's listing); POST does not.
        """
        part, nodes = self.ctx.ring.get_nodes(account, container)
        base = forward_headers(req)
        base["X-Backend-Server-Type"] = "container"
        base["X-Timestamp"] = Timestamp.now().internal
        updates = (self._account_update_headers(account, nodes) if account_updates
                   else [{}] * len(nodes))
        responses = await self.make_requests(
            part, nodes, method, lambda n: node_path(n, part, account, container),
            lambda slot: {**base, **updates[slot]},
        )
        self.invalidate_info(account, container)
        return self.quorum_response(responses, len(nodes))

    async def put(self, req: SwiftRequest, account: str, container: str) -> SwiftResponse:
        problem = self._check(req, container)
        if problem is not None:
            return problem
        policy = req.headers.get("X-Storage-Policy")
        if policy is not None and policy.strip().lower() != DEFAULT_POLICY.lower():
            return error_response(400, f"Invalid X-Storage-Policy {policy.strip()!r}")
        denial = await self.authorize(req)
        if denial is not None:
            return denial
        _drop_owner_settings(req)
        problem = await self.ensure_account(req, account)
        if problem is not None:
            return problem
        problem = await self._check_stored_metadata(req, account, container)
        if problem is not None:
            return problem
        return await self._write_replicas(req, "PUT", account, container,
                                          account_updates=True)

    async def _check_stored_metadata(self, req: SwiftRequest, account: str,
                                     container: str) -> SwiftResponse | None:
        """400 when this write would take an existing container's metadata past the
        limits (a new container's is the request's own, checked already)."""
        if not any(key.lower().startswith("x-container-meta-") for key in req.headers):
            return None
        info = await self.container_info(account, container)
        if info["status"] // 100 != 2:
            return None
        message = check_metadata_after(info["meta"], req.headers, "container",
                                       self.ctx.limits)
        return error_response(400, message) if message else None

    async def post(self, req: SwiftRequest, account: str, container: str) -> SwiftResponse:
        problem = self._check(req, container)
        if problem is not None:
            return problem
        denial = await self.authorize(req)
        if denial is not None:
            return denial
        _drop_owner_settings(req)
        info = await self.container_info(account, container)
        if info["status"] == 404:
            return error_response(404)
        problem = await self._check_stored_metadata(req, account, container)
        if problem is not None:
            return problem
        return await self._write_replicas(req, "POST", account, container,
                                          account_updates=False)

    async def delete(self, req: SwiftRequest, account: str, container: str) -> SwiftResponse:
        denial = await self.authorize(req)
        if denial is not None:
            return denial
        resp = await self._write_replicas(req, "DELETE", account, container,
                                          account_updates=True)
        if resp.status == 409:
            return error_response(409, "There was a conflict when trying to complete your "
                                       "request. The container is not empty.")
        return resp
