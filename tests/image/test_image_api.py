"""The image API end to end, judged by python-glanceclient, openstacksdk and raw HTTP."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import glanceclient
import pytest
import requests
from glanceclient import exc as glance_exc

from tests.image.conftest import ImageService

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img (Debian qemu-utils) is needed")


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def glance(image_service: ImageService) -> glanceclient.v2.client.Client:
    return glanceclient.Client("2", endpoint=image_service.image_url,
                               token=image_service.token())


@pytest.fixture
def glance2(image_service: ImageService) -> glanceclient.v2.client.Client:
    return glanceclient.Client("2", endpoint=image_service.image_url,
                               token=image_service.token("test2:tester2", "testing2"))


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _download(client: glanceclient.v2.client.Client, image_id: str) -> bytes:
    return b"".join(client.images.data(image_id))


def test_qcow2_and_raw_lifecycle(glance, tmp_path: Path) -> None:
    qcow = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", str(qcow), "64M")
    raw = os.urandom(3 * 1024 * 1024 + 17)
    tag = f"t-{os.urandom(4).hex()}"

    img_q = glance.images.create(name="cirros-like", disk_format="qcow2",
                                 container_format="bare", tags=[tag], os_distro="cirros",
                                 min_ram=64)
    assert img_q.status == "queued" and img_q.visibility == "shared"
    with qcow.open("rb") as fh:
        glance.images.upload(img_q.id, fh)
    img_r = glance.images.create(name="raw-disk", disk_format="raw", container_format="bare",
                                 tags=[tag])
    glance.images.upload(img_r.id, io.BytesIO(raw))

    shown = glance.images.get(img_q.id)
    assert shown.status == "active"
    assert shown.size == qcow.stat().st_size
    assert shown.checksum == _md5(qcow.read_bytes())
    assert shown.os_hash_algo == "sha512"
    assert shown.os_hash_value == hashlib.sha512(qcow.read_bytes()).hexdigest()
    assert shown.virtual_size == 64 * 1024 * 1024
    assert shown.os_distro == "cirros" and shown.min_ram == 64

    assert _download(glance, img_q.id) == qcow.read_bytes()
    assert _download(glance, img_r.id) == raw

    listed = {i.id for i in glance.images.list(filters={"tag": [tag]})}
    assert listed == {img_q.id, img_r.id}
    only_qcow = [i.id for i in glance.images.list(filters={"tag": [tag], "disk_format": "qcow2"})]
    assert only_qcow == [img_q.id]
    big = [i.id for i in glance.images.list(filters={"tag": [tag], "size_min": 2 * 1024**2})]
    assert big == [img_r.id]
    by_name = [i.id for i in glance.images.list(filters={"tag": [tag]}, sort="name:asc")]
    assert by_name == [img_q.id, img_r.id]
    paged = [i.id for i in glance.images.list(filters={"tag": [tag]}, page_size=1,
                                              sort_key="name", sort_dir="desc")]
    assert paged == [img_r.id, img_q.id]

    glance.images.update(img_r.id, name="renamed", hw_disk_bus="virtio")
    assert glance.images.get(img_r.id).name == "renamed"
    glance.images.update(img_r.id, remove_props=["hw_disk_bus"])
    assert "hw_disk_bus" not in glance.images.get(img_r.id)

    glance.images.delete(img_q.id)
    glance.images.delete(img_r.id)
    with pytest.raises(glance_exc.HTTPNotFound):
        glance.images.get(img_q.id)


def test_range_download_and_content_md5(glance, image_service: ImageService) -> None:
    data = os.urandom(10 * 1024 * 1024 + 5)  # 3 of the cluster's 4 MiB segments
    img = glance.images.create(name="ranged", disk_format="raw", container_format="bare")
    glance.images.upload(img.id, io.BytesIO(data))
    headers = {"X-Auth-Token": image_service.token()}
    url = f"{image_service.image_url}/v2/images/{img.id}/file"
    full = requests.get(url, headers=headers, timeout=60)
    assert full.status_code == 200 and full.headers["Content-MD5"] == _md5(data)
    assert full.content == data
    start, end = 4 * 1024 * 1024 - 3, 8 * 1024 * 1024 + 2
    part = requests.get(url, headers={**headers, "Range": f"bytes={start}-{end}"}, timeout=60)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert part.content == data[start : end + 1]
    tail = requests.get(url, headers={**headers, "Range": "bytes=-10"}, timeout=60)
    assert tail.content == data[-10:]
    bad = requests.get(url, headers={**headers, "Range": f"bytes={len(data)}-"}, timeout=60)
    assert bad.status_code == 416
    glance.images.delete(img.id)


def test_sharing_with_another_account(glance, glance2) -> None:
    img = glance.images.create(name="shared-one", disk_format="raw", container_format="bare")
    glance.images.upload(img.id, io.BytesIO(b"\0" * 4096))
    with pytest.raises(glance_exc.HTTPNotFound):
        glance2.images.get(img.id)
    glance.image_members.create(img.id, "AUTH_test2")
    assert glance2.images.get(img.id).id == img.id  # a pending member may look
    assert img.id not in {i.id for i in glance2.images.list()}  # but not in its listing
    with pytest.raises(glance_exc.HTTPForbidden):
        glance.image_members.update(img.id, "AUTH_test2", "accepted")  # owner can't accept
    glance2.image_members.update(img.id, "AUTH_test2", "accepted")
    assert img.id in {i.id for i in glance2.images.list()}
    assert _download(glance2, img.id) == b"\0" * 4096
    with pytest.raises(glance_exc.HTTPForbidden):
        glance2.images.delete(img.id)
    members = list(glance.image_members.list(img.id))
    assert [(m.member_id, m.status) for m in members] == [("AUTH_test2", "accepted")]
    glance.image_members.delete(img.id, "AUTH_test2")
    with pytest.raises(glance_exc.HTTPNotFound):
        glance2.images.get(img.id)
    glance.images.delete(img.id)


def test_protected_deactivate_and_tags(glance, glance2, image_service: ImageService) -> None:
    img = glance.images.create(name="guarded", disk_format="raw", container_format="bare",
                               protected=True, visibility="shared")
    glance.images.upload(img.id, io.BytesIO(b"x" * 1000))
    with pytest.raises(glance_exc.HTTPForbidden):
        glance.images.delete(img.id)
    glance.image_tags.update(img.id, "gold")
    assert "gold" in glance.images.get(img.id).tags
    glance.image_tags.delete(img.id, "gold")
    assert "gold" not in glance.images.get(img.id).tags

    glance.images.deactivate(img.id)
    assert glance.images.get(img.id).status == "deactivated"
    with pytest.raises(glance_exc.HTTPForbidden):
        _download(glance, img.id)
    admin = glanceclient.Client("2", endpoint=image_service.image_url,
                                token=image_service.token("admin:admin", "admin"))
    assert _download(admin, img.id) == b"x" * 1000  # admins still can
    glance.images.reactivate(img.id)
    assert _download(glance, img.id) == b"x" * 1000
    glance.images.update(img.id, protected=False)
    glance.images.delete(img.id)


def test_stage_and_glance_direct_import(glance, tmp_path: Path) -> None:
    vmdk = tmp_path / "disk.vmdk"
    qemu_img("create", "-f", "vmdk", str(vmdk), "32M")
    img = glance.images.create(name="imported", disk_format="vmdk", container_format="bare")
    with vmdk.open("rb") as fh:
        glance.images.stage(img.id, fh)
    assert glance.images.get(img.id).status == "uploading"
    glance.images.image_import(img.id, method="glance-direct")
    import time

    deadline = time.monotonic() + 30
    while glance.images.get(img.id).status != "active" and time.monotonic() < deadline:
        time.sleep(0.2)
    done = glance.images.get(img.id)
    assert done.status == "active" and done.checksum == _md5(vmdk.read_bytes())
    assert done.virtual_size == 32 * 1024 * 1024
    assert _download(glance, img.id) == vmdk.read_bytes()
    glance.images.delete(img.id)


def _sdk(image_service: ImageService):
    import openstack

    return openstack.connection.Connection(
        auth_type="admin_token",
        auth={"endpoint": image_service.image_url, "token": image_service.token()},
        image_endpoint_override=image_service.image_url,
    )


def test_openstacksdk_round_trip(image_service: ImageService) -> None:
    conn = _sdk(image_service)
    data = os.urandom(100_000)
    img = conn.image.create_image(name="sdk-image", data=data, disk_format="raw",
                                  container_format="bare", validate_checksum=True)
    fetched = conn.image.get_image(img.id)
    assert fetched.status == "active" and fetched.checksum == _md5(data)
    assert conn.image.download_image(fetched).content == data
    assert img.id in [i.id for i in conn.image.images(name="sdk-image")]
    conn.image.delete_image(img.id)
    assert conn.image.find_image(img.id) is None


def test_openstacksdk_imports_and_raw_virtual_size(image_service: ImageService) -> None:
    """openstacksdk's import path (it needs the create answer's import-methods header),
    and a raw image's virtual size is all of its bytes, past the inspector's head window
    and whatever the chunking (it was the bytes seen when the window filled)."""
    import time

    conn = _sdk(image_service)
    data = os.urandom(3_000_000)
    img = conn.image.create_image(name="sdk-import", data=data, disk_format="raw",
                                  container_format="bare", use_import=True)
    deadline = time.monotonic() + 30
    while conn.image.get_image(img.id).status != "active" and time.monotonic() < deadline:
        time.sleep(0.2)
    done = conn.image.get_image(img.id)
    assert done.status == "active" and done.checksum == _md5(data)
    assert done.size == done.virtual_size == len(data)
    put = conn.image.create_image(name="sdk-put", data=data, disk_format="raw",
                                  container_format="bare")
    assert conn.image.get_image(put.id).virtual_size == len(data)
    for image_id in (img.id, put.id):
        conn.image.delete_image(image_id)
