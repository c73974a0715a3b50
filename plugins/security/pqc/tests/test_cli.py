"""``novacron keys`` as a real subprocess: generate (0600), show, enroll, list."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def novacron(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "novacron_sdk", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_generate_enroll_list(tmp_path: Path) -> None:
    done = novacron("keys", "generate", "--name", "host-a", home=tmp_path)
    assert done.returncode == 0, done.stderr
    private = tmp_path / "novacron" / "node.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert "fingerprint: sha256:" in done.stdout
    seed = json.loads(private.read_text())["mldsa65_seed"]
    assert seed not in done.stdout + done.stderr

    peer_dir = tmp_path / "peer"
    peer = novacron(
        "keys", "generate", "--name", "host-b", "--out", str(peer_dir / "b.key"), home=tmp_path
    )
    assert peer.returncode == 0, peer.stderr
    enrolled = novacron("keys", "enroll", str(peer_dir / "b.pub"), home=tmp_path)
    assert enrolled.returncode == 0, enrolled.stderr
    listed = novacron("keys", "list", "--json", home=tmp_path)
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["host-b"]
    shown = json.loads(
        novacron("keys", "show", "--key", str(peer_dir / "b.key"), home=tmp_path).stdout
    )
    assert shown["fingerprint"] == rows[0]["fingerprint"]

    removed = novacron("keys", "remove", "host-b", home=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert "no longer trusted" in removed.stdout
    assert "no peer is enrolled" in novacron("keys", "list", home=tmp_path).stdout

    again = novacron("keys", "generate", "--name", "host-a", home=tmp_path)
    assert again.returncode == 2
    assert "exists" in again.stderr


def test_enrolling_a_file_that_is_no_public_key_says_so(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("ssh-ed25519 AAAA... user@host\n")
    partial = tmp_path / "partial.pub"
    partial.write_text(json.dumps({"format": "novacron-pqc-public/1", "name": "x"}))
    for path in (garbage, partial):
        done = novacron("keys", "enroll", str(path), home=tmp_path)
        assert done.returncode == 2
        assert done.stderr.startswith(
            f"error: {path} is not a NovaCron public key file (novacron-pqc-public/1): "
        ), done.stderr
        assert "Traceback" not in done.stderr
    assert "no peer is enrolled" in novacron("keys", "list", home=tmp_path).stdout
