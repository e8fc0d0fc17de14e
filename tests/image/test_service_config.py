"""How `swiftlike serve` configures the image service: its store user and segment size."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from swiftlike.common.config import ConfigError
from swiftlike.proxy.tempauth import DEFAULT_USERS, TempAuth
from swiftlike.serve import (
    CLUSTER_FILE,
    IMAGE_SERVICE_USER,
    ServeOptions,
    configure_image_service,
    prepare_cluster,
)


def _read(data_dir: Path) -> dict:
    with (data_dir / CLUSTER_FILE).open("rb") as fh:
        return tomllib.load(fh)


def test_new_cluster_gets_a_service_user_and_keeps_it(tmp_path: Path) -> None:
    opts = ServeOptions(data_dir=tmp_path, nodes=1, part_power=4, image_segment_size=5 << 20)
    prepare_cluster(opts)
    first = _read(tmp_path)
    image, users = first["image"], first["auth"]["extra_users"]
    assert image["store_user"] == IMAGE_SERVICE_USER and image["segment_size"] == 5 << 20
    assert users[IMAGE_SERVICE_USER] == f"{image['store_key']} .admin"
    assert "users" not in first["auth"]  # the all-in-one defaults stay in force

    prepare_cluster(ServeOptions(data_dir=tmp_path, nodes=1))  # restart without the option
    second = _read(tmp_path)
    assert second["image"] == image and second["auth"]["extra_users"] == users

    prepare_cluster(ServeOptions(data_dir=tmp_path, nodes=1, image_segment_size=1 << 20))
    assert _read(tmp_path)["image"]["segment_size"] == 1 << 20


def test_older_cluster_gets_the_user_and_operator_choice_is_kept() -> None:
    old = {"auth": {"secret": "s"}, "image": {"registry": "/x/images.sqlite"}}
    assert configure_image_service(old, ServeOptions()) is True
    assert old["image"]["store_user"] == IMAGE_SERVICE_USER
    assert configure_image_service(old, ServeOptions()) is False  # idempotent

    chosen = {"image": {"store_user": "ops:images", "store_key": "k"}}
    assert configure_image_service(chosen, ServeOptions()) is False
    assert "auth" not in chosen
    with pytest.raises(ConfigError):
        configure_image_service(chosen, ServeOptions(image_segment_size=0))


def test_tempauth_extra_users_add_to_the_defaults() -> None:
    auth = TempAuth(None, {"auth": {"secret": "s", "extra_users": {
        "glance:glance": "k .admin"}}})
    assert set(auth.users) == {*DEFAULT_USERS, "glance:glance"}
    assert auth.users["glance:glance"].groups == (".admin",)
    explicit = TempAuth(None, {"auth": {"secret": "s", "users": {"a:b": "c"},
                                        "extra_users": {"glance:glance": "k .admin"}}})
    assert set(explicit.users) == {"a:b", "glance:glance"}


def test_the_registry_file_is_for_the_image_service_only(tmp_path) -> None:
    """It holds every image's record, private images included."""
    from swiftlike.image.registry import SqliteImageRepository

    SqliteImageRepository(tmp_path / "reg" / "images.sqlite")
    assert (tmp_path / "reg" / "images.sqlite").stat().st_mode & 0o077 == 0
