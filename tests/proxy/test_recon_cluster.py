"""GET /recon/cluster on the proxy: every node's stats, for reseller admins only."""

from __future__ import annotations

import aiohttp

from tests.cluster_harness import ServedCluster


async def _token(session: aiohttp.ClientSession, cluster: ServedCluster, user: str,
                 key: str) -> str:
    async with session.get(cluster.auth_url,
                           headers={"X-Auth-User": user, "X-Auth-Key": key}) as resp:
        assert resp.status == 200
        return resp.headers["X-Auth-Token"]


async def test_cluster_recon_needs_a_reseller_admin(swift_cluster: ServedCluster) -> None:
    url = f"{swift_cluster.proxy_url}/recon/cluster/replication"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 401
        async with session.get(url, headers={"X-Auth-Token": "AUTH_tkforged"}) as resp:
            assert resp.status == 401
        owner = await _token(session, swift_cluster, "test:tester", "testing")
        async with session.get(url, headers={"X-Auth-Token": owner}) as resp:
            assert resp.status == 403
            assert "127.0.0.1" not in await resp.text()
        admin = await _token(session, swift_cluster, "admin:admin", "admin")
        async with session.get(url, headers={"X-Auth-Token": admin}) as resp:
            assert resp.status == 200
            body = await resp.json()
        async with session.get(f"{swift_cluster.proxy_url}/recon/cluster/bogus",
                               headers={"X-Auth-Token": admin}) as resp:
            assert resp.status == 404
    assert body["what"] == "replication"
    assert body["unreachable"] == []
    assert len(body["nodes"]) == 4
