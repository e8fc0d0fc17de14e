"""Path hashing and config parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ring.hashing import hash_path, hash_path_hex, partition_of, suffix_of
from swiftlike.common.config import ConfigError, conf_bool, dump_toml, load_config

names = st.text(min_size=1, max_size=40)


@given(names, names, names)
def test_salt_changes_placement_and_hash_is_stable(a: str, c: str, o: str) -> None:
    plain = hash_path(a, c, o)
    assert plain == hash_path(a, c, o)
    assert hash_path(a, c, o, prefix=b"secret") != plain
    assert hash_path(a, c, o, suffix=b"secret") != plain
    assert len(plain) == 16


@given(st.binary(min_size=16, max_size=16), st.integers(min_value=0, max_value=32))
def test_partition_is_within_range(digest: bytes, power: int) -> None:
    assert 0 <= partition_of(digest, power) < 2**power


def test_levels_are_distinct_and_suffix_is_last_three_hex() -> None:
    assert len({hash_path("a"), hash_path("a", "c"), hash_path("a", "c", "o")}) == 3
    hexed = hash_path_hex("a", "c", "o")
    assert suffix_of(hexed) == hexed[-3:]
    with pytest.raises(ValueError):
        hash_path("a", None, "o")


def test_config_round_trip(tmp_path: Path) -> None:
    conf = {"cluster": {"ring": "/x/y.ring", "hash_path_prefix": 'q"uote'},
            "auth": {"users": {"test:tester": "testing .admin"}, "token_life": 60}}
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(conf))
    assert load_config(path) == conf


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(bad)


@pytest.mark.parametrize(("raw", "want"), [("yes", True), ("0", False), (True, True),
                                           (None, False), ("off", False)])
def test_conf_bool(raw: object, want: bool) -> None:
    assert conf_bool(raw) is want
