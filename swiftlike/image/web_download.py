"""The ``web-download`` import: the image service fetches an image's bytes from a URL.

Why a filter on the URL: the service fetches from where it stands, inside the cloud, so
a user could point it at addresses only the cloud can reach (metadata services, the
storage nodes' own ports) and learn from the result. As Glance does, an operator says
which schemes, ports and hosts are fair game (``[image] web_download_*``); by default
http and https on ports 80 and 443, any host. A list of allowed values, when set, is
the whole rule; the matching "disallowed" list counts only when it is empty.

The filter judges what the HTTP client will really connect to, not the URL's text: the
host as yarl (aiohttp's URL parser) reads it (IDNA mapping and full-width digits
included), an IPv4-mapped IPv6 address as its IPv4 address, the unspecified address as
the loopback it reaches, and, when hosts are filtered by a disallowed list, every
address a host name resolves to at connect time (so ``0x7f000001`` or a DNS name that
points at a refused address is refused too). Host entries may be names, addresses or
networks (``169.254.0.0/16``). Each redirect's target is filtered again before it is
followed.

The bytes go through the same pipeline as an upload (``upload.store_stream``): size,
checksum and format checks, segmenting, and no bytes left behind on failure.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from swiftlike.image.store import Location, SwiftStore
from swiftlike.image.upload import UploadRefused, UploadResult, Verifier, store_stream

MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
CHUNK = 1024 * 1024

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UriRefused(ValueError):
    """The URL does not pass the operator's filter (HTTP 400 at import time)."""


class DownloadFailed(Exception):
    """The source did not deliver: an error status, too many redirects, a cut body."""


#: a URL's ``user:password@`` inside any text: up to the last ``@`` of the authority (a
#: password may hold a raw ``@``), never across quotes or brackets
USERINFO = re.compile(r"//[^/?#\s'\"<>]*@")


def without_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it removed."""
    return USERINFO.sub("//", text)


def shown(uri: object) -> str:
    """``uri`` for messages and logs, without any ``user:password@``."""
    try:
        return str(URL(str(uri)).with_user(None))
    except (ValueError, TypeError):  # not a URL yarl can build: strip it by pattern
        return without_userinfo(str(uri))


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
        refused = UriRefused(f"URI for web-download does not pass filtering: {shown(uri)}")
        try:
            url = URL(uri)
            scheme, host, port = url.scheme.lower(), url.host, url.port
        except (ValueError, UnicodeError) as exc:  # a bad port, a host IDNA refuses
            raise refused from exc
        if scheme not in DEFAULT_PORTS or not host or port is None:
            raise refused  # only HTTP(S) is spoken here, whatever the lists say
        if not (_passes(scheme, self.allowed_schemes, self.disallowed_schemes)
                and self.host_passes(host)
                and _passes(port, self.allowed_ports, self.disallowed_ports)):
            raise refused
        return uri

    def host_passes(self, host: str) -> bool:
        """May a URL name ``host`` (a name or an address)?"""
        key = _host_key(host)
        if self.allowed_hosts:
            return _host_listed(key, self.allowed_hosts)
        return not _host_listed(key, self.disallowed_hosts)

    def address_passes(self, address: str) -> bool:
        """May a connection go to ``address``, which an allowed name resolved to? An
        allowed-hosts list trusts its names wherever they point; a disallowed list
        is checked against every address."""
        return bool(self.allowed_hosts) or \
            not _host_listed(_host_key(address), self.disallowed_hosts)


def _host_key(host: str) -> str | Address:
    """One spelling per host: lower case without a trailing dot for a name; for an
    address, the address a connection to it reaches."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        address: Address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the spelling yarl gives a URL's host: IDNA mapped, punycode decoded
            return (URL.build(scheme="http", host=host).host or host).rstrip(".")
        except (ValueError, UnicodeError):
            return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:  # connect() to 0.0.0.0 or :: reaches this host
        address = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
    return address


def _host_listed(key: str | Address, entries: tuple[str, ...]) -> bool:
    for entry in entries:
        if _host_key(entry) == key:  # a name, or one address in any of its spellings
            return True
        if isinstance(key, str):
            continue  # a network never holds a name
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            continue
        if key.version == network.version and key in network:
            return True
    return False


def _passes(value: object, allowed: tuple, disallowed: tuple) -> bool:
    if allowed:
        return value in allowed
    return value not in disallowed


class _FilteringResolver(AbstractResolver):
    """The default resolver, refusing a name that resolves to a refused address."""

    def __init__(self, uri_filter: UriFilter) -> None:
        self._inner = DefaultResolver()
        self._filter = uri_filter

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if not self._filter.address_passes(result["host"]):
                raise UriRefused(f"web-download host {host} resolves to {result['host']}, "
                                 "which does not pass filtering")
        return results

    async def close(self) -> None:
        await self._inner.close()


async def fetch_into_store(uri: str, uri_filter: UriFilter, store: SwiftStore,
                           container: str, name: str, verifier: Verifier,
                           wait_seconds: float) -> tuple[Location, UploadResult]:
    """Download ``uri`` (following filtered redirects) into the store as ``name``;
    ``wait_seconds`` bounds the wait to resolve and connect and for each next piece of
    the body (not the whole download: an image may take hours)."""
    timeout = aiohttp.ClientTimeout(total=None, connect=wait_seconds,
                                    sock_connect=wait_seconds, sock_read=wait_seconds)
    connector = aiohttp.TCPConnector(resolver=_FilteringResolver(uri_filter))
    async with aiohttp.ClientSession(auto_decompress=False, timeout=timeout,
                                     connector=connector) as session:
        url = uri_filter.check(uri)
        for _ in range(MAX_REDIRECTS + 1):
            # identity: the image is the bytes as served, never a decompressed copy
            async with session.get(url, allow_redirects=False,
                                   headers={"Accept-Encoding": "identity"}) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    url = uri_filter.check(urljoin(url, resp.headers["Location"]))
                    continue
                if resp.status != 200:
                    raise DownloadFailed(f"{shown(url)} answered {resp.status}")
                cap = verifier.size_cap
                if cap is not None and resp.content_length is not None \
                        and resp.content_length > cap:
                    raise UploadRefused(f"Image exceeds the storage quota: {shown(url)} "
                                        f"declares {resp.content_length} bytes, more "
                                        f"than {cap}", 413)
                return await store_stream(store, container, name,
                                          resp.content.iter_chunked(CHUNK), verifier,
                                          resp.content_length)
        raise DownloadFailed(f"more than {MAX_REDIRECTS} redirects from {shown(uri)}")
