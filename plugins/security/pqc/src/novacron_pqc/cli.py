"""``novacron keys``: generate this node's keys, show them, enrol peers and list the enrolled."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from novacron_sdk.cli.interface import CliCommand

if TYPE_CHECKING:
    from novacron_pqc.settings import SecuritySettings


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="create this node's key pair (private file is 0600)")
    gen.add_argument("--name", default=None, help="node name (default: this host's name)")
    gen.add_argument("--out", type=Path, default=None, help="private key file path")
    show = sub.add_parser("show", help="print this node's public key file and fingerprint")
    show.add_argument("--key", type=Path, default=None, help="private key file path")
    enroll = sub.add_parser("enroll", help="trust a peer: pin its public key file")
    enroll.add_argument("public_key", type=Path, help="the peer's .pub file")
    enroll.add_argument("--replace", action="store_true", help="change an existing pin")
    enroll.add_argument("--dir", type=Path, default=None, help="enrolled-keys directory")
    remove = sub.add_parser("remove", help="stop trusting a peer: delete its pin")
    remove.add_argument("name", help="the peer's node name")
    remove.add_argument("--dir", type=Path, default=None, help="enrolled-keys directory")
    listing = sub.add_parser("list", help="list enrolled peers and their fingerprints")
    listing.add_argument("--dir", type=Path, default=None, help="enrolled-keys directory")
    listing.add_argument("--json", action="store_true", help="JSON output")


def _settings(args: argparse.Namespace) -> SecuritySettings:
    from novacron_pqc.settings import SecuritySettings
    from novacron_sdk.cli.commands import cli_config

    return cli_config(args).get("security", SecuritySettings)


def _run(args: argparse.Namespace) -> int:
    from novacron_pqc.identity import EnrolledKeys, NodeIdentity, PublicIdentity

    action = args.keys_action
    out = sys.stdout
    if action == "generate":
        path = args.out or _settings(args).identity_path()
        name = args.name or socket.gethostname().split(".")[0]
        public = NodeIdentity.generate(name).save(path)
        identity = PublicIdentity.load(public)
        out.write(f"private key: {path} (mode 0600, keep it secret)\n")
        out.write(f"public key:  {public}\n")
        out.write(f"fingerprint: {identity.fingerprint}\n")
        out.write(f"enrol it on each peer with: novacron keys enroll {public.name}\n")
        return 0
    if action == "show":
        node = NodeIdentity.load(args.key or _settings(args).identity_path())
        out.write(json.dumps(node.public.to_json(), indent=2) + "\n")
        return 0
    directory = args.dir or _settings(args).enrolled_path()
    enrolled = EnrolledKeys(directory)
    if action == "enroll":
        identity = PublicIdentity.load(args.public_key)
        target = enrolled.enroll(identity, replace=args.replace)
        out.write(f"enrolled {identity.name} {identity.fingerprint} -> {target}\n")
        return 0
    if action == "remove":
        removed = enrolled.remove(args.name)
        out.write(f"removed {args.name} {removed.fingerprint}; it is no longer trusted here\n")
        return 0
    rows = [{"name": i.name, "fingerprint": i.fingerprint} for i in enrolled]
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
    elif not rows:
        out.write(f"no peer is enrolled in {directory}\n")
    for row in [] if args.json else rows:
        out.write(f"{row['name']:<24} {row['fingerprint']}\n")
    return 0


def keys_command() -> CliCommand:
    """The ``keys`` subcommand."""
    return CliCommand(
        help="Node keys and enrolled peers (novacron-pqc).", configure=_configure, run=_run
    )
