"""Hybrid signatures, key files and their permissions, enrolment pins."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from novacron_pqc.identity import (
    ED25519_SIGNATURE_BYTES,
    PUBLIC_FORMAT,
    EnrolledKeys,
    NodeIdentity,
    PublicIdentity,
    UntrustedPeerError,
)
from novacron_sdk.errors import SecurityError


def test_sign_verify_and_both_halves_matter() -> None:
    node = NodeIdentity.generate("n1")
    sig = node.sign(b"message")
    node.public.verify(sig, b"message")
    with pytest.raises(SecurityError, match="does not verify"):
        node.public.verify(sig, b"other message")
    for index in (3, ED25519_SIGNATURE_BYTES + 3):  # Ed25519 part, then ML-DSA part
        bad = bytearray(sig)
        bad[index] ^= 1
        with pytest.raises(SecurityError, match="does not hold the private key"):
            node.public.verify(bytes(bad), b"message")


def test_key_files_round_trip_with_0600(tmp_path: Path) -> None:
    node = NodeIdentity.generate("n1")
    public_path = node.save(tmp_path / "keys" / "node.key")
    private = tmp_path / "keys" / "node.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public_path == tmp_path / "keys" / "node.pub"
    loaded = NodeIdentity.load(private)
    assert loaded.public == node.public
    assert PublicIdentity.load(public_path).fingerprint == node.public.fingerprint
    with pytest.raises(SecurityError, match="exists"):
        node.save(private)


def test_readable_private_key_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "node.key"
    NodeIdentity.generate("n1").save(private)
    private.chmod(0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        NodeIdentity.load(private)


def test_repr_shows_no_key_material(tmp_path: Path) -> None:
    node = NodeIdentity.generate("n1")
    private = tmp_path / "node.key"
    node.save(private)
    seeds = json.loads(private.read_text())
    text = repr(node) + str(node)
    assert "n1" in text
    assert seeds["ed25519_seed"] not in text
    assert node._ed25519_seed.hex() not in text


def test_altered_public_file_is_detected(tmp_path: Path) -> None:
    path = NodeIdentity.generate("n1").save(tmp_path / "node.key")
    data = json.loads(path.read_text())
    data["ed25519"] = PublicIdentity.load(path).to_json()["ed25519"][::-1]
    path.write_text(json.dumps(data))
    with pytest.raises(SecurityError):
        PublicIdentity.load(path)


def test_enrolment_pins_and_explains(tmp_path: Path) -> None:
    enrolled = EnrolledKeys(tmp_path / "enrolled")
    peer = NodeIdentity.generate("peer")
    assert len(enrolled) == 0
    with pytest.raises(SecurityError, match="not enrolled here"):
        enrolled.check(peer.public)
    enrolled.enroll(peer.public)
    assert enrolled.check(peer.public) == peer.public
    impostor = NodeIdentity.generate("peer")  # same name, other keys
    with pytest.raises(SecurityError, match="wrong key"):
        enrolled.check(impostor.public)
    with pytest.raises(SecurityError, match="--replace"):
        enrolled.enroll(impostor.public)
    enrolled.enroll(impostor.public, replace=True)
    assert enrolled.check(impostor.public).fingerprint == impostor.public.fingerprint
    assert [i.name for i in enrolled] == ["peer"]
    enrolled.remove("peer")
    with pytest.raises(SecurityError, match="not enrolled here"):
        enrolled.check(impostor.public)
    with pytest.raises(SecurityError, match="keys list"):
        enrolled.remove("peer")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"not a key\n", "it is not JSON"),
        (b"", "it is not JSON"),
        (b"\xff\xfe\x00", "it is not JSON"),
        (b"[]", ""),
        (json.dumps({"format": PUBLIC_FORMAT, "name": "x"}).encode(), "'ed25519', 'mldsa65'"),
    ],
)
def test_a_file_that_is_no_public_key_says_so(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "j.pub"
    path.write_bytes(content)
    with pytest.raises(SecurityError) as caught:
        PublicIdentity.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not a NovaCron public key file ({PUBLIC_FORMAT})")
    assert why in message
    assert "Expecting value" not in message
    assert "KeyError" not in message


def test_a_private_key_given_as_public_key_says_which_file_to_enrol(tmp_path: Path) -> None:
    NodeIdentity.generate("n1").save(tmp_path / "node.key")
    with pytest.raises(SecurityError, match="it is a private key file; enrol the matching"):
        PublicIdentity.load(tmp_path / "node.key")


def test_a_private_key_file_that_is_not_json_says_so(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_text("secret words\n")
    path.chmod(0o600)
    with pytest.raises(SecurityError) as caught:
        NodeIdentity.load(path)
    assert str(caught.value) == (
        f"{path} is not a NovaCron private key file (novacron-pqc-private/1): it is not JSON"
    )


def test_a_refusal_names_the_refusing_node_when_told_to_the_peer(tmp_path: Path) -> None:
    enrolled = EnrolledKeys(tmp_path / "enrolled")
    peer = NodeIdentity.generate("host-a")
    with pytest.raises(UntrustedPeerError) as caught:
        enrolled.check(peer.public)
    assert "run on this host: novacron keys enroll host-a.pub" in str(caught.value)
    told = caught.value.explain("host-b")
    assert f"peer 'host-a' ({peer.public.fingerprint[:23]}) is not enrolled on 'host-b'" in told
    assert told.endswith("to trust it, run on host-b: novacron keys enroll host-a.pub")
    enrolled.enroll(NodeIdentity.generate("host-a").public)  # another key under that name
    with pytest.raises(UntrustedPeerError) as wrong:
        enrolled.check(peer.public)
    assert "wrong key" in wrong.value.explain("host-b")
    assert wrong.value.explain("host-b").endswith(
        "run on host-b: novacron keys enroll --replace host-a.pub"
    )


def test_enrolment_made_while_running_is_seen(tmp_path: Path) -> None:
    running = EnrolledKeys(tmp_path / "enrolled")
    peer = NodeIdentity.generate("late")
    EnrolledKeys(tmp_path / "enrolled").enroll(peer.public)  # e.g. `novacron keys enroll`
    assert running.check(peer.public).name == "late"


@pytest.mark.parametrize("name", ["", "../etc", ".hidden", "a b", "x" * 65])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(SecurityError, match="invalid"):
        NodeIdentity.generate(name)
