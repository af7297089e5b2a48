"""The nodes of the mounted tree and their inode numbers, stable while mounted.

A node is named by what it is (:class:`Node`): the root, a project's directory, a snapshot's root, an
entry of a snapshot (by snapshot id and path), ``latest``, ``by-date`` and its links. The first time a
node is handed to the kernel it gets the next inode number, and keeps it until the unmount (the kernel's
``forget`` does not recycle it): ``find -inum``, ``tar`` and ``diff`` see one file as one file. The table
grows with the nodes looked at, not with the store (a node is numbered when the kernel first sees it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyfuse3

__all__ = ["InodeTable", "Node"]

NodeKind = Literal["root", "project", "snapshot", "entry", "latest", "by-date", "date-link"]


@dataclass(frozen=True)
class Node:
    """What an inode stands for. ``path``: an entry's path in its snapshot; ``name``: a by-date link's."""

    kind: NodeKind
    project: str = ""
    snapshot: str = ""
    path: str = ""
    name: str = ""


ROOT = Node("root")


class InodeTable:
    """Node <-> inode number, both ways."""

    def __init__(self) -> None:
        self._nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: ROOT}
        self._inodes: dict[Node, int] = {ROOT: pyfuse3.ROOT_INODE}
        self._next = pyfuse3.ROOT_INODE + 1

    def inode(self, node: Node) -> int:
        """The inode number of ``node`` (a new one the first time)."""
        ino = self._inodes.get(node)
        if ino is None:
            ino = self._inodes[node] = self._next
            self._nodes[ino] = node
            self._next += 1
        return ino

    def node(self, inode: int) -> Node | None:
        """The node of an inode number handed out, or None."""
        return self._nodes.get(inode)

    def __len__(self) -> int:
        return len(self._nodes)
