"""Static web sites on plain /v1 paths (no domain remapping), for anonymous browsers."""

from __future__ import annotations

import pytest

from tests.middleware.helpers import Account


@pytest.fixture
def site(account: Account, unique_name: str) -> str:
    conn = account.conn()
    conn.put_container(unique_name, headers={
        "X-Container-Read": ".r:*,.rlistings",
        "X-Container-Meta-Web-Index": "index.html",
        "X-Container-Meta-Web-Error": "error.html",
    })
    conn.put_object(unique_name, "index.html", b"<h1>home</h1>", content_type="text/html")
    conn.put_object(unique_name, "404error.html", b"<h1>lost</h1>", content_type="text/html")
    conn.put_object(unique_name, "docs/index.html", b"<h1>docs</h1>", content_type="text/html")
    conn.put_object(unique_name, "files/a.txt", b"aaa", content_type="text/plain")
    conn.put_object(unique_name, "files/b c.txt", b"bb", content_type="text/plain")
    conn.put_object(unique_name, "marker", b"", content_type="application/directory")
    return unique_name


async def test_info_advertises_staticweb(swift_cluster, http) -> None:
    async with http.get(swift_cluster.proxy_url + "/info") as resp:
        assert (await resp.json())["staticweb"] == {}


async def test_index_and_redirects(account, site, http) -> None:
    base = f"{account.url}/{site}"
    async with http.get(base + "/") as resp:
        assert resp.status == 200
        assert await resp.read() == b"<h1>home</h1>"
    async with http.get(base, allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["Location"].endswith(f"/{site}/")
    async with http.get(base + "/docs", allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["Location"].endswith(f"/{site}/docs/")
    async with http.get(base + "/docs/") as resp:
        assert await resp.read() == b"<h1>docs</h1>"
    async with http.get(base + "/files", allow_redirects=False) as resp:
        assert resp.status == 301


async def test_error_pages_and_directory_markers(account, site, http) -> None:
    base = f"{account.url}/{site}"
    async with http.get(base + "/nothing-here") as resp:
        assert resp.status == 404
        assert await resp.read() == b"<h1>lost</h1>"
    async with http.get(base + "/marker") as resp:
        assert resp.status == 404, "a directory marker is not a page"
    async with http.get(base + "/files/a.txt") as resp:
        assert resp.status == 200
        assert await resp.read() == b"aaa"


async def test_listings(account, site, http) -> None:
    conn = account.conn()
    conn.post_container(site, headers={"X-Container-Meta-Web-Listings": "true",
                                       "X-Container-Meta-Web-Listings-CSS": "style.css"})
    async with http.get(f"{account.url}/{site}/files/") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        page = await resp.text()
    assert f"Listing of {account.path}/{site}/files/" in page
    assert '<a href="a.txt">a.txt</a>' in page
    assert '<a href="b%20c.txt">b c.txt</a>' in page
    assert '<a href="../">../</a>' in page
    assert 'href="../style.css"' in page
    # a label stands in for /v1/<account>/<container>: the account is not shown
    conn.post_container(site, headers={"X-Container-Meta-Web-Listings-Label": "My <Site>"})
    async with http.get(f"{account.url}/{site}/files/") as resp:
        page = await resp.text()
    assert "Listing of My &lt;Site&gt;/files/" in page
    assert account.path not in page
    conn.post_container(site, headers={"X-Container-Meta-Web-Listings-Label": ""})
    # listings off and no index: the "disabled" page with 404
    conn.post_container(site, headers={"X-Container-Meta-Web-Listings": "false"})
    async with http.get(f"{account.url}/{site}/files/") as resp:
        assert resp.status == 404


async def test_authenticated_users_get_the_api_unless_web_mode(account, site, http) -> None:
    async with http.get(f"{account.url}/{site}/", headers=account.headers()) as resp:
        assert resp.status == 200
        names = (await resp.text()).split()
    assert "index.html" in names and "files/a.txt" in names
    async with http.get(f"{account.url}/{site}/",
                        headers=account.headers(**{"X-Web-Mode": "true"})) as resp:
        assert await resp.read() == b"<h1>home</h1>"


async def test_private_container_stays_private(account, unique_name, http) -> None:
    conn = account.conn()
    conn.put_container(unique_name, headers={"X-Container-Meta-Web-Index": "index.html",
                                             "X-Container-Meta-Web-Listings": "true"})
    conn.put_object(unique_name, "index.html", b"secret")
    async with http.get(f"{account.url}/{unique_name}/") as resp:
        assert resp.status == 401
        assert b"secret" not in await resp.read()
    async with http.get(f"{account.url}/{unique_name}/index.html") as resp:
        assert resp.status == 401


@pytest.mark.parametrize("acl, allowed", [
    (".r:www.example.com", {"http://www.example.com/a"}),
    (".r:.example.com", {"http://www.example.com/a"}),
    (".r:*,.r:-evil.com", {None, "http://www.example.com/a", "http://example.com/"}),
])
async def test_referrer_acls_for_anonymous_reads(account, unique_name, http, acl,
                                                 allowed) -> None:
    """.r:<host> grants and .r:-<host> denies by the Referer header. The anonymous read
    reaches the controller as staticweb's subrequest, which used to drop the client's
    headers: every named-host rule denied, and every deny rule was ignored."""
    conn = account.conn()
    conn.put_container(unique_name, headers={"X-Container-Read": acl})
    conn.put_object(unique_name, "x", b"pubdata")
    for referrer in (None, "http://www.example.com/a", "http://example.com/",
                     "http://evil.com/"):
        headers = {"Referer": referrer} if referrer else {}
        async with http.get(f"{account.url}/{unique_name}/x", headers=headers) as resp:
            want = 200 if referrer in allowed else 401
            assert resp.status == want, (acl, referrer, resp.status)
            if want == 200:
                assert await resp.read() == b"pubdata"
