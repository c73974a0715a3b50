"""Encode guest memory with the DWCP page codec, with and without reference files.

Run: python examples/dwcp_encoding.py [MEMORY_IMAGE [REFERENCE_FILE ...]]

Without arguments it makes its own "memory": 8 MiB holding a copy of a 4 MiB "kernel" file
(random bytes, so incompressible), text, and zero pages. It encodes the memory twice, as the
first round of a migration would send it: once plainly, once with the kernel file given to
both ends as a reference file, and prints the bytes each took and what the chain did with the
pages. Give a raw memory dump and the files it was booted from (for example a corpus image
and its kernel from ``benchmarks/corpus``) to try real memory.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

from novacron_dwcp.encoding.chain import DwcpCodec
from novacron_sdk.encoding.interface import PageBatch
from novacron_sdk.errors import ConfigError, NovaCronError

PAGE = 4096
BATCH = 256


def sample(folder: Path) -> tuple[bytes, list[Path]]:
    """8 MiB of made-up memory and the 4 MiB 'kernel' file half of it is copied from."""
    rng = random.Random(1)
    kernel = folder / "vmlinuz"
    kernel.write_bytes(rng.randbytes(4 << 20))
    text = b"".join(
        f"line {n}: GET /api/items/{n * 7919 % 100003}\n".encode() for n in range(90000)
    )
    memory = kernel.read_bytes() + text[: 2 << 20] + bytes(2 << 20)
    return memory, [kernel]


def encode(memory: bytes, settings: dict[str, object]) -> tuple[int, dict[str, int]]:
    """Bytes of every payload of one pass over ``memory`` (checked by decoding), and stats."""
    codec = DwcpCodec(settings)
    encoder, decoder = codec.new_encoder(PAGE), codec.new_decoder(PAGE)
    total = 0
    for first in range(0, len(memory) // PAGE, BATCH):
        pages = list(range(first, min(first + BATCH, len(memory) // PAGE)))
        batch = PageBatch(pages, memory[pages[0] * PAGE : (pages[-1] + 1) * PAGE])
        payload = encoder.encode(batch)
        if decoder.decode(payload).data != batch.data:
            raise SystemExit("round trip failed")
        total += len(payload)
    return total, encoder.stats().by_kind


def main() -> int:
    """Encode the memory plainly and with reference files; exit 2 on unusable input."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            if len(sys.argv) > 1:
                data = Path(sys.argv[1]).read_bytes()
                memory, files = data[: len(data) // PAGE * PAGE], [Path(p) for p in sys.argv[2:]]
                if not memory:
                    msg = f"{sys.argv[1]} holds {len(data)} bytes, less than one {PAGE}-byte page"
                    raise ConfigError(msg)
            else:
                memory, files = sample(Path(folder))
            plain, plain_kinds = encode(memory, {})
            referenced, kinds = encode(memory, {"reference_files": [str(f) for f in files]})
    except OSError as exc:
        reason = f"cannot read {exc.filename}: {exc.strerror}" if exc.filename else exc
        print(f"error: {reason}", file=sys.stderr)
        return 2
    except NovaCronError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = len(memory)
    print(f"memory: {size:,} bytes; reference files: {', '.join(f.name for f in files) or '-'}")
    print(f"plain:                {plain:>10,} bytes  {plain_kinds}")
    print(f"with reference files: {referenced:>10,} bytes  {kinds}")
    print(
        f"output bytes / input bytes: plain {plain / size:.3f}, "
        f"with reference files {referenced / size:.3f}"
    )
    print(f"ratio (output bytes with reference files / plain): {referenced / plain:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
