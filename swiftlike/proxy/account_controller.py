"""Accounts: container listings, stats, metadata; creation/deletion for reseller admins.

With ``account_autocreate`` (Swift's default for tempauth clusters) an account that
was never written reads as empty rather than 404, and its first POST or container
PUT creates it.
"""

from __future__ import annotations

import json

from multidict import CIMultiDict

from swiftlike.common.constraints import (
    check_listing_params,
    check_metadata,
    check_metadata_after,
)
from swiftlike.common.listing import render_rows
from swiftlike.common.node_client import node_path
from swiftlike.common.timestamp import Timestamp
from swiftlike.proxy.base_controller import (
    BackendResponse,
    Controller,
    client_headers,
    forward_headers,
    parse_account_acl,
    translate_remove_headers,
)
from swiftlike.proxy.container_controller import (
    listing_answer_headers,
    listing_query,
    negotiated_listing,
)
from swiftlike.proxy.info import DEFAULT_POLICY
from swiftlike.proxy.pipeline import SwiftRequest, SwiftResponse, error_response

#: Account headers only the account owner may see.
OWNER_ONLY_HEADERS = (
    "X-Account-Meta-Temp-URL-Key",
    "X-Account-Meta-Temp-URL-Key-2",
    "X-Account-Access-Control",
)


class AccountController(Controller):
    server_type = "account"

    async def handle(self, req: SwiftRequest, account: str) -> SwiftResponse:
        method = req.method
        if method in ("GET", "HEAD"):
            return await self.get_or_head(req, account)
        if method == "POST":
            return await self.post(req, account)
        if method in ("PUT", "DELETE"):
            return await self.put_or_delete(req, account)
        return error_response(405, headers={"Allow": "GET, HEAD, POST, PUT, DELETE"})

    async def get_or_head(self, req: SwiftRequest, account: str) -> SwiftResponse:
        denial = await self.authorize(req)
        if denial is not None:
            return denial
        listing = negotiated_listing(req)
        if isinstance(listing, SwiftResponse):
            return listing
        query = None
        if req.method == "GET":
            message, status = check_listing_params(
                req.query, self.ctx.limits.account_listing_limit)
            if message:
                return error_response(status, message)
            query = listing_query(req, listing[0])
        part, nodes = self.ctx.ring.get_nodes(account)
        headers = forward_headers(req)
        headers["X-Backend-Server-Type"] = "account"
        if req.method == "HEAD":
            resp = await self.head_shared(("a", account, headers.get("X-Newest", "")), part,
                                          nodes, lambda n: node_path(n, part, account),
                                          headers, since=req.environ.get("swift.arrival"))
        else:
            resp = await self.get_first(
                part, nodes, req.method, lambda n: node_path(n, part, account), headers,
                query)
        if resp is None:
            return error_response(503)
        if resp.status == 404:
            if resp.headers.get("X-Account-Status", "").lower() == "deleted":
                # as Swift: a reseller deleted it; its data goes with the reaper
                return error_response(410, "This account was deleted",
                                      headers={"X-Account-Status": "Deleted"})
            if self.ctx.account_autocreate and req.environ.get("swift.owner", True):
                return self._empty_account(req, listing)
            return error_response(404)
        out = client_headers(resp.headers)
        if resp.status // 100 == 2:
            listing_answer_headers(req, out, listing)
        if out.get("X-Account-Container-Count", "0") != "0":
            # one policy holds everything: its per-policy counts are the account's
            prefix = f"X-Account-Storage-Policy-{DEFAULT_POLICY}-"
            for what in ("Container-Count", "Object-Count", "Bytes-Used"):
                if f"X-Account-{what}" in out:
                    out[prefix + what] = out[f"X-Account-{what}"]
        if not req.environ.get("swift.owner", True):
            for key in OWNER_ONLY_HEADERS:
                out.popall(key, None)
        if req.method == "HEAD":
            length = int(resp.headers.get("Content-Length", 0) or 0)
            return SwiftResponse(resp.status, out, None, content_length=length)
        return SwiftResponse(resp.status, out, resp.body)

    def _empty_account(self, req: SwiftRequest, listing: tuple[str, str]) -> SwiftResponse:
        """What a never-written account looks like (Swift fakes the same answer)."""
        now = Timestamp.now()
        headers: CIMultiDict[str] = CIMultiDict({
            "X-Account-Container-Count": "0",
            "X-Account-Object-Count": "0",
            "X-Account-Bytes-Used": "0",
            "X-Timestamp": now.normal,
            "X-PUT-Timestamp": now.normal,
        })
        listing_answer_headers(req, headers, listing)
        if req.method == "HEAD":
            return SwiftResponse(204, headers, None, content_length=0)
        if listing[0] == "plain":
            return SwiftResponse(204, headers, b"")
        body, _ = render_rows("account", req.split_path()[1] or "", [], listing[0])
        return SwiftResponse(200, headers, body)

    async def post(self, req: SwiftRequest, account: str) -> SwiftResponse:
        translate_remove_headers(req.headers, "account")
        message = check_metadata(req.headers, "account", self.ctx.limits)
        if message:
            return error_response(400, message)
        if "X-Account-Access-Control" in req.headers:
            acl = parse_account_acl(req.headers["X-Account-Access-Control"])
            if acl is None:
                return error_response(400, "Invalid X-Account-Access-Control: a JSON object "
                                           "of admin, read-write, read-only lists expected")
            req.headers["X-Account-Access-Control"] = json.dumps(acl) if acl else ""
        denial = await self.authorize(req)
        if denial is not None:
            return denial
        if "X-Account-Access-Control" in req.headers and not req.environ.get(
                "swift.owner", True):
            return error_response(403, "Only account administrators may change account ACLs")
        part, nodes = self.ctx.ring.get_nodes(account)
        info = await self.account_info(account)
        if info.get("deleted"):
            return error_response(404)  # as Swift: no autocreate over a deleted account
        if info["status"] // 100 == 2:
            message = check_metadata_after(info["meta"], req.headers, "account",
                                           self.ctx.limits)
            if message:
                return error_response(400, message)
        base = forward_headers(req)
        base["X-Backend-Server-Type"] = "account"
        base["X-Timestamp"] = Timestamp.now().internal
        method = "POST"
        if info["status"] == 404:
            if not self.ctx.account_autocreate:
                return error_response(404)
            method = "PUT"  # autocreate with the metadata in one write
        responses = await self.make_requests(
            part, nodes, method, lambda n: node_path(n, part, account), lambda slot: base)
        self.invalidate_info(account)
        resp = self.quorum_response(responses, len(nodes))
        if resp.status // 100 == 2:
            resp.status = 204
        return resp

    async def put_or_delete(self, req: SwiftRequest, account: str) -> SwiftResponse:
        """Account management: allowed only to reseller admins by the auth middleware."""
        if req.method == "PUT":
            translate_remove_headers(req.headers, "account")
            message = check_metadata(req.headers, "account", self.ctx.limits)
            if message:
                return error_response(400, message)
        if not req.environ.get("swift.reseller_request"):
            denial = await self.authorize(req)
            if denial is not None:
                return denial
            if "swift.authorize" in req.environ:
                return error_response(403)
        part, nodes = self.ctx.ring.get_nodes(account)
        base = forward_headers(req)
        base["X-Backend-Server-Type"] = "account"
        base["X-Timestamp"] = Timestamp.now().internal
        responses = await self.make_requests(
            part, nodes, req.method, lambda n: node_path(n, part, account), lambda slot: base)
        self.invalidate_info(account)
        answer = self.quorum_response(responses, len(nodes))
        if req.method == "PUT" and answer.status == 403 and any(
                r is not None and r.status == 403 for r in responses):
            await self._undo_refused_put(part, account, responses, base["X-Timestamp"])
        return answer

    async def _undo_refused_put(self, part: int, account: str,
                                responses: list[BackendResponse | None], put_stamp: str
                                ) -> None:
        """A PUT that replicas of a deleted account refused must not revive it where a
        replica lacked the database and made one: replication would spread that newer
        put timestamp and bring the account back. So those replicas (and any that had
        not answered) get a DELETE just after the PUT; merged, every replica is then
        deleted later than it was put."""
        refused = {r.node["id"] for r in responses if r is not None and r.status == 403}
        targets = [node for node in self.ctx.ring.get_part_nodes(part)
                   if node["id"] not in refused]
        if not targets:
            return
        headers = {"X-Backend-Server-Type": "account",
                   "X-Timestamp": Timestamp(put_stamp, offset=1).internal}
        await self.make_requests(part, targets, "DELETE",
                                 lambda n: node_path(n, part, account), lambda slot: headers)
