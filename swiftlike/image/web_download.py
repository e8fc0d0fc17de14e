"""The ``web-download`` import: the image service fetches an image's bytes from a URL.

Why a filter on the URL: the service fetches from where it stands, inside the cloud, so
a user could point it at addresses only the cloud can reach (metadata services, the
storage nodes' own ports) and learn from the result. As Glance does, an operator says
which schemes, ports and hosts are fair game (``[image] web_download_*``); by default
http and https on ports 80 and 443, any host. A list of allowed values, when set, is
the whole rule; the matching "disallowed" list counts only when it is empty. Each
redirect's target is filtered again before it is followed.

The bytes go through the same pipeline as an upload (``upload.store_stream``): size,
checksum and format checks, segmenting, and no bytes left behind on failure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

from swiftlike.image.store import Location, SwiftStore
from swiftlike.image.upload import UploadResult, Verifier, store_stream

MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
CHUNK = 1024 * 1024


class UriRefused(ValueError):
    """The URL does not pass the operator's filter (HTTP 400 at import time)."""


class DownloadFailed(Exception):
    """The source did not deliver: an error status, too many redirects, a cut body."""


@dataclass(frozen=True)
class UriFilter:
    """Which URLs the service may fetch (Glance's ``import_filtering_opts``)."""

    allowed_schemes: tuple[str, ...] = ("http", "https")
    disallowed_schemes: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    disallowed_hosts: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] = (80, 443)
    disallowed_ports: tuple[int, ...] = ()

    def check(self, uri: str) -> str:
        """``uri`` if it may be fetched; UriRefused (naming it) if not."""
        refused = UriRefused(f"URI for web-download does not pass filtering: {uri}")
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError as exc:  # a port out of range or not a number
            raise refused from exc
        scheme = parts.scheme.lower()
        host = _normal_host(parts.hostname or "")
        if scheme not in DEFAULT_PORTS or not host:
            raise refused  # only HTTP(S) is spoken here, whatever the lists say
        port = port if port is not None else DEFAULT_PORTS[scheme]
        if not (_passes(scheme, self.allowed_schemes, self.disallowed_schemes)
                and _passes(host, tuple(_normal_host(h) for h in self.allowed_hosts),
                            tuple(_normal_host(h) for h in self.disallowed_hosts))
                and _passes(port, self.allowed_ports, self.disallowed_ports)):
            raise refused
        return uri


def _normal_host(host: str) -> str:
    """One spelling per host: lower case, an IP address in its canonical form (so
    ``127.000.000.001``-style tricks cannot slip past a disallowed ``127.0.0.1``)."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _passes(value: object, allowed: tuple, disallowed: tuple) -> bool:
    if allowed:
        return value in allowed
    return value not in disallowed


async def fetch_into_store(uri: str, uri_filter: UriFilter, store: SwiftStore,
                           container: str, name: str, verifier: Verifier,
                           wait_seconds: float) -> tuple[Location, UploadResult]:
    """Download ``uri`` (following filtered redirects) into the store as ``name``;
    ``wait_seconds`` bounds the wait to connect and for each next piece of the body
    (not the whole download: an image may take hours)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=wait_seconds,
                                    sock_read=wait_seconds)
    async with aiohttp.ClientSession(auto_decompress=False, timeout=timeout) as session:
        url = uri_filter.check(uri)
        for _ in range(MAX_REDIRECTS + 1):
            # identity: the image is the bytes as served, never a decompressed copy
            async with session.get(url, allow_redirects=False,
                                   headers={"Accept-Encoding": "identity"}) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    url = uri_filter.check(urljoin(url, resp.headers["Location"]))
                    continue
                if resp.status != 200:
                    raise DownloadFailed(f"{url} answered {resp.status}")
                return await store_stream(store, container, name,
                                          resp.content.iter_chunked(CHUNK), verifier,
                                          resp.content_length)
        raise DownloadFailed(f"more than {MAX_REDIRECTS} redirects from {uri}")
