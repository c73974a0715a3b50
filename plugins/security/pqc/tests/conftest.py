"""Fixtures: two nodes that enrolled each other, and a stranger nobody enrolled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from novacron_pqc.identity import EnrolledKeys, NodeIdentity
from novacron_pqc.provider import PqcSecurityProvider


@dataclass
class Node:
    identity: NodeIdentity
    enrolled: EnrolledKeys

    def provider(self, **settings: object) -> PqcSecurityProvider:
        return PqcSecurityProvider(
            {"identity": self.identity, "enrolled": self.enrolled, **settings}
        )


def make_node(tmp_path: Path, name: str) -> Node:
    return Node(NodeIdentity.generate(name), EnrolledKeys(tmp_path / f"{name}-enrolled"))


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Node, Node]:
    a, b = make_node(tmp_path, "node-a"), make_node(tmp_path, "node-b")
    a.enrolled.enroll(b.identity.public)
    b.enrolled.enroll(a.identity.public)
    return a, b


@pytest.fixture
def stranger(tmp_path: Path) -> Node:
    return make_node(tmp_path, "stranger")
