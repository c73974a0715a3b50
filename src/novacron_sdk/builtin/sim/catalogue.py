"""What a sim host offers: built-in and file memory images, sizes, and how a spec becomes memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from novacron_sdk.builtin.sim.memory import GuestMemory
from novacron_sdk.builtin.sim.store import SimExtra, parse_extra
from novacron_sdk.errors import NotFoundError
from novacron_sdk.models import Image, Size, VMSpec

MIB = 1024 * 1024

BUILTIN_IMAGES: dict[str, tuple[str, str]] = {
    "sim-empty": ("zero", "All-zero memory (a freshly booted, idle guest)."),
    "sim-linux-like": ("mixed", "Zero, duplicate and semi-compressible pages, like a Linux guest."),
}
SIZES: tuple[tuple[str, int, int], ...] = (
    ("sim.tiny", 1, 64),
    ("sim.small", 1, 512),
    ("sim.medium", 2, 2048),
    ("sim.large", 4, 8192),
    ("sim.xlarge", 8, 16384),
)
IMAGE_SUFFIXES = (".img", ".raw")


def image_files(image_dir: Path | None) -> list[Path]:
    """Raw memory images (``*.img``, ``*.raw``) in ``image_dir``, sorted by name."""
    if image_dir is None or not image_dir.is_dir():
        return []
    return sorted(p for p in image_dir.iterdir() if p.suffix in IMAGE_SUFFIXES and p.is_file())


def list_images(driver: str, image_dir: Path | None) -> list[Image]:
    """The built-in images, then the image files."""
    images = [
        Image(id=name, name=name, driver=driver, extra={"fill": fill, "about": about})
        for name, (fill, about) in BUILTIN_IMAGES.items()
    ]
    images += [
        Image(
            id=path.name,
            name=path.name,
            driver=driver,
            extra={"path": str(path), "size_bytes": path.stat().st_size},
        )
        for path in image_files(image_dir)
    ]
    return images


def list_sizes(driver: str) -> list[Size]:
    """The size catalogue."""
    return [
        Size(id=size_id, name=size_id, vcpus=vcpus, memory_mib=mib, driver=driver)
        for size_id, vcpus, mib in SIZES
    ]


def resolve_spec(spec: VMSpec, host_name: str) -> VMSpec:
    """Apply ``spec.size`` (unless vcpus/memory were given explicitly) and check the location."""
    update: dict[str, Any] = {}
    if spec.size is not None:
        sizes = {size_id: (vcpus, mib) for size_id, vcpus, mib in SIZES}
        if spec.size not in sizes:
            msg = f"no sim size {spec.size!r}; known: {', '.join(sizes)}"
            raise NotFoundError(msg)
        vcpus, mib = sizes[spec.size]
        if "vcpus" not in spec.model_fields_set:
            update["vcpus"] = vcpus
        if "memory_mib" not in spec.model_fields_set:
            update["memory_mib"] = mib
    if spec.location not in (None, host_name):
        msg = f"no sim location {spec.location!r}; this host is {host_name!r}"
        raise NotFoundError(msg)
    return spec.model_copy(update=update, deep=True)


def memory_source(spec: VMSpec, extra: SimExtra, image_dir: Path | None) -> tuple[str, Path | None]:
    """Where a VM's first memory comes from: (fill kind, image file or None).

    ``extra.memory_image`` wins, then ``spec.image`` (a built-in image or a file in
    ``image_dir``), then ``extra.fill``.
    """
    if extra.memory_image:
        return extra.fill, Path(extra.memory_image)
    if spec.image is None:
        return extra.fill, None
    if spec.image in BUILTIN_IMAGES:
        return BUILTIN_IMAGES[spec.image][0], None
    for path in image_files(image_dir):
        if spec.image in (path.name, str(path)):
            return extra.fill, path
    known = ", ".join(image.id for image in list_images("sim", image_dir))
    msg = f"no sim image {spec.image!r}; known: {known}"
    raise NotFoundError(msg)


def build_memory(spec: VMSpec, image_dir: Path | None) -> GuestMemory:
    """Allocate and initialise a VM's memory from its spec (slow for big VMs: use a thread)."""
    extra = parse_extra(spec.extra)
    fill, image = memory_source(spec, extra, image_dir)
    memory = GuestMemory(spec.memory_mib * MIB)
    try:
        if image is not None:
            memory.load_image(image)
        elif fill == "mixed":
            memory.fill("mixed", extra.seed)
    except BaseException:
        memory.close()
        raise
    return memory
