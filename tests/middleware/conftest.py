"""Fixtures for the middleware API tests: a token for test:tester and an HTTP session.

Every test talks to the real `swiftlike serve` of the session (`swift_cluster`) over
loopback, with python-swiftclient where it has a command and raw aiohttp otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import swiftclient

from tests.middleware.helpers import Account


@pytest.fixture(scope="session")
def account(swift_cluster) -> Account:
    url, token = swiftclient.get_auth(swift_cluster.auth_url, swift_cluster.user,
                                      swift_cluster.key)
    return Account(url, token, swift_cluster.auth_url, swift_cluster.user, swift_cluster.key)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session
