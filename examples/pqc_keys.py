"""Two node identities, enrolled in each other, talking over a sealed TCP channel on 127.0.0.1.

Install the core with the plugin (``pip install novacron-sdk novacron-pqc``), then run::

    python examples/pqc_keys.py

It writes key files into a temporary directory (private keys with mode 0600), pins each
node's public key at the other (what ``novacron keys enroll`` does), runs the hybrid
X25519+ML-KEM-768 handshake authenticated with Ed25519+ML-DSA-65, and echoes sealed frames.
A node nobody enrolled is then refused.
"""

from __future__ import annotations

import asyncio
import stat
import tempfile
from pathlib import Path

from novacron_pqc.identity import EnrolledKeys, NodeIdentity, PublicIdentity
from novacron_pqc.provider import PqcSecurityProvider
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.errors import SecurityError
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.security.channel import secure_channel
from novacron_sdk.transport.interface import Channel, Endpoint


def provider(root: Path, name: str) -> PqcSecurityProvider:
    """The pqc provider of node ``name`` with its key files under ``root``."""
    return PqcSecurityProvider(
        {
            "identity_key": str(root / name / "node.key"),
            "enrolled_dir": str(root / name / "enrolled"),
        }
    )


async def main() -> None:
    """Generate, enrol, handshake, echo; then show a refusal."""
    plugins = build_plugin_manager()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("host-a", "host-b", "stranger"):
            public = NodeIdentity.generate(name).save(root / name / "node.key")
            mode = stat.S_IMODE((root / name / "node.key").stat().st_mode)
            print(f"{name}: {PublicIdentity.load(public).fingerprint[:23]}  key mode {mode:o}")
        for host, peer in (("host-a", "host-b"), ("host-b", "host-a")):
            pin = PublicIdentity.load(root / peer / "node.pub")
            EnrolledKeys(root / host / "enrolled").enroll(pin)

        async def serve(channel: Channel) -> None:
            try:
                sealed = await secure_channel(
                    plugins, channel, "responder", provider(root, "host-b")
                )
            except SecurityError as exc:
                print(f"host-b refused a peer: {exc}")
                return
            while (frame := await sealed.recv()) != b"bye":
                await sealed.send(frame.upper())

        transport = TcpTransport()
        listener = await transport.listen(Endpoint(host="127.0.0.1"), serve)
        raw = await transport.connect(listener.endpoint)
        sealed = await secure_channel(plugins, raw, "initiator", provider(root, "host-a"))
        print(f"host-a authenticated {sealed.peer_id}")
        for word in (b"hello", b"post-quantum", b"world"):
            await sealed.send(word)
            print(f"  sent {word!r}, got {await sealed.recv()!r}")
        await sealed.send(b"bye")
        stats = sealed.stats()
        print(f"  {stats.payload_bytes_sent} payload bytes, {stats.wire_bytes_sent} on the wire")
        await sealed.close()

        raw = await transport.connect(listener.endpoint)
        try:
            await secure_channel(plugins, raw, "initiator", provider(root, "stranger"))
        except SecurityError as exc:
            print(f"stranger was refused: {exc}")
        await listener.close()


if __name__ == "__main__":
    asyncio.run(main())
