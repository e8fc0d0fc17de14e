"""Reads answered whole for slo/dlo/symlink (X-Backend-Whole-If-Metadata-Present),
over a real cluster with the default pipeline and a relay that can cut a node's answer.
"""

from __future__ import annotations

import hashlib
import json

import aiohttp
import pytest
import pytest_asyncio

from swiftlike.proxy.pipeline import DEFAULT_PIPELINE
from swiftlike.proxy.server import CONTEXT_KEY
from tests.proxy.cluster import start_cluster, stop_cluster
from tests.proxy.test_security_and_faults import auth, status

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def module_cluster(tmp_path_factory):
    c = await start_cluster(tmp_path_factory.mktemp("whole-reads"),
                            proxy_conf={"pipeline": list(DEFAULT_PIPELINE)})
    try:
        yield c
    finally:
        await stop_cluster(c)


async def test_ranged_read_of_an_slo_resumes_when_its_manifest_breaks(ring_read_order):
    """The manifest (over 64 KiB, so streamed) is cut mid-body: the resumed read asks
    another node for the rest of the same bytes, which must not come back whole."""
    cluster = ring_read_order
    url, token = await auth(cluster, "test:tester", "testing")
    async with aiohttp.ClientSession() as s:
        for container in ("segs", "man"):
            assert (await status(s, "PUT", f"{url}/{container}", token))[0] in (201, 202)
        entries, data = [], b""
        for i in range(80):  # long names: an 80-entry manifest over 64 KiB
            name, chunk = f"{i:04d}-" + "x" * 800, bytes([65 + i % 26]) * 10
            assert (await status(s, "PUT", f"{url}/segs/{name}", token, data=chunk))[0] == 201
            entries.append({"path": f"/segs/{name}", "etag": hashlib.md5(chunk).hexdigest(),
                            "size_bytes": 10})
            data += chunk
        code, _ = await status(s, "PUT", f"{url}/man/big?multipart-manifest=put", token,
                               data=json.dumps(entries).encode())
        assert code == 201
        code, raw = await status(s, "GET", f"{url}/man/big?multipart-manifest=get", token)
        assert code == 200 and len(raw) > 65536
        _, nodes = cluster.proxy_app[CONTEXT_KEY].ring.get_nodes("AUTH_test", "man", "big")
        first = next(f for f in cluster.faults if f.port == nodes[0]["port"])
        first.arm_cut(40000)
        code, body = await status(s, "GET", f"{url}/man/big", token,
                                  headers={"Range": "bytes=5-24"})
        assert first.cuts == 1, "the relay did not cut the first node's answer"
        assert (code, body) == (206, data[5:25])


async def test_copy_cannot_set_the_reserved_slo_flag(cluster):
    """A copy's PUT may carry X-Static-Large-Object from the source, never from the
    client: a stored 'false' would make the object server answer ranged reads whole."""
    url, token = await auth(cluster, "test:tester", "testing")
    data = b"0123456789abcdefghij"
    async with aiohttp.ClientSession() as s:
        assert (await status(s, "PUT", f"{url}/flags", token))[0] in (201, 202)
        assert (await status(s, "PUT", f"{url}/flags/src", token, data=data))[0] == 201
        for value in ("false", "true"):
            code, body = await status(s, "PUT", f"{url}/flags/dst", token, headers={
                "X-Copy-From": "flags/src", "X-Static-Large-Object": value})
            assert code == 400 and b"reserved" in body
            code, body = await status(s, "COPY", f"{url}/flags/src", token, headers={
                "Destination": "flags/dst", "X-Static-Large-Object": value})
            assert code == 400
        assert (await status(s, "GET", f"{url}/flags/dst", token))[0] == 404
        code, body = await status(s, "PUT", f"{url}/flags/dst", token,
                                  headers={"X-Copy-From": "flags/src"})
        assert code == 201
        code, body = await status(s, "GET", f"{url}/flags/dst", token,
                                  headers={"Range": "bytes=2-5"})
        assert (code, body) == (206, data[2:6])
