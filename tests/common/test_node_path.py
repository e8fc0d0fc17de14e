"""Backend paths: every name percent-encoded exactly as ``urllib.parse.quote`` would."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from swiftlike.common.node_client import node_path


@given(st.text(min_size=1), st.text(min_size=1), st.text())
def test_node_path_quotes_every_name_as_quote_does(account: str, container: str,
                                                   obj: str) -> None:
    expected = "/" + "/".join(quote(p.encode("utf-8", "surrogateescape"), safe="")
                              for p in ("sdb1", "17", account, container, obj))
    assert node_path({"device": "sdb1"}, 17, account, container, obj) == expected
