"""Helpers shared by the middleware API tests."""

from __future__ import annotations

from dataclasses import dataclass

import swiftclient


@dataclass
class Account:
    url: str
    token: str
    auth_url: str
    user: str
    key: str

    @property
    def path(self) -> str:
        """The account's path, e.g. ``/v1/AUTH_test``."""
        return "/" + self.url.split("/", 3)[3]

    def conn(self) -> swiftclient.Connection:
        return swiftclient.Connection(preauthurl=self.url, preauthtoken=self.token,
                                      retries=0)

    def headers(self, **extra: str) -> dict[str, str]:
        return {"X-Auth-Token": self.token, **extra}


def swift_cli(account: Account, *args: str) -> None:
    """Run the `swift` command line tool (python-swiftclient's shell) in-process."""
    from swiftclient.shell import main as swift_main

    try:
        swift_main(["swift", "-A", account.auth_url, "-U", account.user, "-K", account.key,
                    *args])
    except SystemExit as exc:
        assert not exc.code, f"swift {' '.join(args)} exited with {exc.code}"
