"""Disk image format inspection, written from the published format specifications.

Why: a user who uploads a qcow2 with a backing file pointing at ``/etc/shadow`` and calls
it ``raw`` (or ``qcow2``) can make a hypervisor read host files. Like Glance since its
format-inspector fixes, we detect the real format from the bytes as they stream past,
refuse bytes that disagree with the declared ``disk_format``, and refuse images that can
reference data outside themselves (qcow2 backing / external data files, VMDK extents
that are not the image itself, non-monolithic VMDK descriptors).

The inspector keeps at most ``HEAD_LIMIT`` bytes (the head of the image): every header
and embedded descriptor we need lies there. Nothing else is buffered.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

HEAD_LIMIT = 1024 * 1024
#: the formats we can recognise from their bytes
INSPECTABLE = ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso")
#: declared formats whose bytes we accept as raw (Glance treats them as raw data)
RAW_LIKE = ("raw", "ami", "ari", "aki")

_QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_KNOWN_INCOMPATIBLE = 0b11111  # dirty, corrupt, external data, compression, extended L2
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_EXT_END = 0
_VMDK_MAGIC = b"KDMV"
_VMDK_ALLOWED_TYPES = ("monolithicSparse", "streamOptimized")
_VDI_SIGNATURE = 0xBEDA107F
_ISO_OFFSETS = (0x8001, 0x8801, 0x9001)
_EXTENT_RE = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\S+)(?:\s+"([^"]*)")?', re.MULTILINE)
_CREATE_TYPE_RE = re.compile(r'^\s*createType\s*=\s*"([^"]*)"', re.MULTILINE)


class ImageFormatError(ValueError):
    """The bytes are not what the image record says, or are unsafe to hand to a hypervisor."""


@dataclass
class InspectionResult:
    """What the head of an image told us."""

    format: str
    virtual_size: int | None


class FormatInspector:
    """Streaming format detector: ``feed`` chunks as they pass, ``result()`` at the end.

    ``check_early()`` can be called after each chunk: once the head window is full it
    raises ``ImageFormatError`` as soon as the bytes disagree with ``expected``, so a bad
    upload is cut short instead of stored first.
    """

    def __init__(self, expected: str | None = None, head_limit: int = HEAD_LIMIT) -> None:
        self.expected = expected
        self.head_limit = head_limit
        self._head = bytearray()
        self._total = 0
        self._result: InspectionResult | None = None

    def feed(self, chunk: bytes) -> None:
        """Remember the part of ``chunk`` that falls inside the head window."""
        room = self.head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
        self._total += len(chunk)
        if self._result is None and len(self._head) >= self.head_limit:
            self._result = self._decide()

    def check_early(self) -> None:
        """Raise now if enough bytes have passed to know the image is wrong."""
        if self._result is not None:
            check_matches(self._result, self.expected)

    def result(self) -> InspectionResult:
        """The final verdict; raises ``ImageFormatError`` for unsafe or mismatching images.

        Decided again now that every byte has passed: the early verdict saw only the
        bytes up to the end of the head window, and a raw image's virtual size is all
        of its bytes.
        """
        self._result = self._decide()
        check_matches(self._result, self.expected)
        return self._result

    def _decide(self) -> InspectionResult:
        head = bytes(self._head)
        found = [probe for probe in _PROBES if probe.matches(head)]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ImageFormatError(f"image data matches several formats ({names}): refused")
        if not found:
            return InspectionResult("raw", self._total)
        return found[0].inspect(head, self._total)


def check_matches(result: InspectionResult, expected: str | None) -> None:
    """Refuse when the detected format is not the declared ``disk_format``."""
    if expected is None or expected not in INSPECTABLE + RAW_LIKE:
        return  # e.g. ploop: nothing we can check
    wanted = "raw" if expected in RAW_LIKE else expected
    if result.format != wanted:
        raise ImageFormatError(
            f"image data is {result.format}, but its disk_format is {expected}"
        )


def inspect_bytes(data: bytes, expected: str | None = None) -> InspectionResult:
    """Inspect a whole (small) image held in memory: used by tests and the CLI."""
    inspector = FormatInspector(expected)
    inspector.feed(data)
    return inspector.result()


def _need(head: bytes, end: int, what: str) -> None:
    if len(head) < end:
        raise ImageFormatError(f"{what} header is truncated")


class _Probe:
    name = ""

    def matches(self, head: bytes) -> bool:
        raise NotImplementedError

    def inspect(self, head: bytes, total: int) -> InspectionResult:
        raise NotImplementedError


class _Qcow2(_Probe):
    """QEMU copy-on-write v2/v3 (qemu docs/interop/qcow2.txt)."""

    name = "qcow2"

    def matches(self, head: bytes) -> bool:
        return head[:4] == _QCOW2_MAGIC

    def inspect(self, head: bytes, total: int) -> InspectionResult:
        _need(head, 72, "qcow2")
        version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
        (virtual_size,) = struct.unpack_from(">Q", head, 24)
        if version not in (2, 3):
            raise ImageFormatError(f"qcow2 version {version} is not supported")
        if backing_offset != 0 or backing_size != 0:
            raise ImageFormatError("qcow2 image has a backing file: refused")
        header_length = 72
        if version == 3:
            _need(head, 104, "qcow2 v3")
            (incompatible,) = struct.unpack_from(">Q", head, 72)
            (header_length,) = struct.unpack_from(">I", head, 100)
            if incompatible & 0b100:
                raise ImageFormatError("qcow2 image has an external data file: refused")
            if incompatible & ~_QCOW2_KNOWN_INCOMPATIBLE:
                raise ImageFormatError("qcow2 image uses unknown incompatible features")
        self._check_extensions(head, header_length)
        return InspectionResult("qcow2", virtual_size)

    @staticmethod
    def _check_extensions(head: bytes, offset: int) -> None:
        """Walk header extensions: an external data file name is refused too."""
        while offset + 8 <= len(head):
            ext_type, length = struct.unpack_from(">II", head, offset)
            if ext_type == _QCOW2_EXT_END:
                return
            if ext_type == _QCOW2_EXT_DATA_FILE:
                raise ImageFormatError("qcow2 image names an external data file: refused")
            offset += 8 + ((length + 7) & ~7)
            if offset > 64 * 1024:  # extensions live in the first cluster
                return


class _Vmdk(_Probe):
    """VMware virtual disk: sparse extent header plus its embedded text descriptor."""

    name = "vmdk"

    def matches(self, head: bytes) -> bool:
        return head[:4] == _VMDK_MAGIC or head.lstrip()[:21] == b"# Disk DescriptorFile"

    def inspect(self, head: bytes, total: int) -> InspectionResult:
        if head[:4] != _VMDK_MAGIC:
            raise ImageFormatError(
                "vmdk is a bare descriptor referring to other files: only monolithic "
                "images are accepted"
            )
        _need(head, 44, "vmdk")
        capacity, _grain, desc_offset, desc_size = struct.unpack_from("<QQQQ", head, 12)
        start, end = desc_offset * 512, (desc_offset + desc_size) * 512
        if desc_offset == 0 or desc_size == 0:
            raise ImageFormatError("vmdk has no embedded descriptor: refused")
        if end > len(head):
            raise ImageFormatError("vmdk descriptor lies outside the inspected header: refused")
        text = head[start:end].split(b"\0", 1)[0].decode("latin-1")
        _check_vmdk_descriptor(text)
        return InspectionResult("vmdk", capacity * 512)


def _check_vmdk_descriptor(text: str) -> None:
    """Only monolithic types whose extents are this very file are safe."""
    match = _CREATE_TYPE_RE.search(text)
    if match is None:
        raise ImageFormatError("vmdk descriptor has no createType")
    if match.group(1) not in _VMDK_ALLOWED_TYPES:
        raise ImageFormatError(f"vmdk createType {match.group(1)!r} is not allowed")
    extents = _EXTENT_RE.findall(text)
    if len(extents) != 1:
        raise ImageFormatError("vmdk must have exactly one extent, in the image itself")
    _access, _size, kind, filename = extents[0]
    if kind != "SPARSE":
        raise ImageFormatError(f"vmdk extent type {kind} is not allowed")
    if not filename or "/" in filename or "\\" in filename:
        raise ImageFormatError("vmdk extent points outside the image: refused")


class _Vhd(_Probe):
    """Microsoft VHD (dynamic disks carry a copy of the footer at offset 0)."""

    name = "vhd"

    def matches(self, head: bytes) -> bool:
        return head[:8] == b"conectix"

    def inspect(self, head: bytes, total: int) -> InspectionResult:
        _need(head, 56, "vhd")
        (size,) = struct.unpack_from(">Q", head, 48)
        return InspectionResult("vhd", size)


class _Vhdx(_Probe):
    """Microsoft VHDX: the file type identifier at offset 0.

    The virtual size lives in the metadata region, usually megabytes into the file,
    so it is left unknown rather than buffered.
    """

    name = "vhdx"

    def matches(self, head: bytes) -> bool:
        return head[:8] == b"vhdxfile"

    def inspect(self, head: bytes, total: int) -> InspectionResult:
        return InspectionResult("vhdx", None)


class _Vdi(_Probe):
    """VirtualBox disk image: signature at 0x40, disk size at 0x170 (little endian)."""

    name = "vdi"

    def matches(self, head: bytes) -> bool:
        return len(head) >= 0x44 and struct.unpack_from("<I", head, 0x40)[0] == _VDI_SIGNATURE

    def inspect(self, head: bytes, total: int) -> InspectionResult:
        _need(head, 0x178, "vdi")
        (size,) = struct.unpack_from("<Q", head, 0x170)
        return InspectionResult("vdi", size)


class _Iso(_Probe):
    """ISO 9660: a volume descriptor "CD001" in sector 16 (or 17, 18)."""

    name = "iso"

    def matches(self, head: bytes) -> bool:
        return any(head[off : off + 5] == b"CD001" for off in _ISO_OFFSETS)

    def inspect(self, head: bytes, total: int) -> InspectionResult:
        if head[0x8001:0x8006] == b"CD001" and len(head) >= 0x8082:
            (blocks,) = struct.unpack_from("<I", head, 0x8050)
            (block_size,) = struct.unpack_from("<H", head, 0x8080)
            return InspectionResult("iso", blocks * block_size)
        return InspectionResult("iso", None)


_PROBES: tuple[_Probe, ...] = (_Qcow2(), _Vmdk(), _Vhd(), _Vhdx(), _Vdi(), _Iso())
