"""Configuration: TOML files for real clusters, generated defaults for `swiftlike serve`.

Every process reads one TOML document; each component applies its own defaults for
keys that are missing, so a config file only says what differs from the defaults.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file is missing, unreadable or malformed."""


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML config file, with an error message that names the file."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            conf = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {p}: {exc}") from exc
    conf.setdefault("cluster", {})
    return conf


def dump_toml(conf: dict[str, Any]) -> str:
    """Write a config dict as TOML (tables of scalars, lists and sub-tables only)."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, str):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            return f'"{escaped}"'
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        raise TypeError(f"cannot write {type(value).__name__} to TOML")

    def table(name: str, body: dict[str, Any]) -> None:
        plain = {k: v for k, v in body.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        for key, value in plain.items():
            lines.append(f"{_key(key)} = {scalar(value)}")
        lines.append("")
        for key, value in nested.items():
            table(f"{name}.{_key(key)}", value)

    for name, body in conf.items():
        if not isinstance(body, dict):
            raise TypeError("top-level config entries must be tables")
        table(_key(name), body)
    return "\n".join(lines)


def _key(key: str) -> str:
    if key.replace("_", "").replace("-", "").isalnum():
        return key
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def hash_salts(conf: dict[str, Any]) -> tuple[bytes, bytes]:
    """The cluster's path-hash prefix and suffix as bytes."""
    cluster = conf.get("cluster", {})
    return (
        str(cluster.get("hash_path_prefix", "")).encode(),
        str(cluster.get("hash_path_suffix", "")).encode(),
    )


def new_secret() -> str:
    """A fresh random secret for hash salts and token signing."""
    return secrets.token_hex(16)


def conf_bool(value: Any, default: bool = False) -> bool:
    """Interpret config truthiness the way operators write it (true/yes/on/1)."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on", "y", "t"}
