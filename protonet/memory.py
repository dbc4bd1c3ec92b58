"""The memory a net's blobs and parameters need, and the limit a net is checked against
before anything is allocated (``Net(..., memory_limit=)``, ``--memory-limit``,
``$PROTONET_MEMORY_LIMIT``)."""
from __future__ import annotations

import os

from .errors import ProtonetError


def parse_bytes(text) -> int:
    """'8G', '512M', '1.5GiB', '100000' -> bytes."""
    import re
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ProtonetError(f"'{text}' is not a memory size (e.g. 8G, 512M)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def available_memory() -> int | None:
    """Bytes of memory available to new work (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_needed(net) -> tuple[int, list[tuple[str, int]]]:
    """Bytes the net's blob and parameter values need (diffs not counted: a forward pass
    never touches them), and the largest blobs, biggest first."""
    sizes: dict[int, tuple[str, int]] = {}
    for name, blob in net.blobs.items():
        sizes[id(blob)] = (name, blob.count * blob.dtype.itemsize)
    for lname, layer in zip(net.layer_names, net.layers):
        for k, blob in enumerate(layer.blobs):
            sizes.setdefault(id(blob), (f"{lname} param {k}", blob.count * blob.dtype.itemsize))
    ranked = sorted(sizes.values(), key=lambda item: -item[1])
    return sum(size for _, size in ranked), ranked


def check_memory(net, limit=None) -> None:
    """Refuse a net whose blobs and parameters would not fit in ``limit`` bytes.

    ``limit`` None: $PROTONET_MEMORY_LIMIT if set, else the machine's available memory;
    0 turns the check off. Called after shapes are known and before anything is filled."""
    if limit is None:
        env = os.environ.get("PROTONET_MEMORY_LIMIT")
        limit = parse_bytes(env) if env else available_memory()
    if not limit:
        return
    need, ranked = memory_needed(net)
    if need <= limit:
        return
    gib = 1 << 30
    largest = ", ".join(f"{name} {size / gib:.2f} GiB" for name, size in ranked[:3])
    raise ProtonetError(
        f"net '{net.name}' needs {need / gib:.2f} GiB for its blobs and parameters, more than "
        f"the {limit / gib:.2f} GiB limit (largest: {largest}); reduce the batch size or input "
        f"size, or raise the limit with --memory-limit / PROTONET_MEMORY_LIMIT (0 = no limit)")
