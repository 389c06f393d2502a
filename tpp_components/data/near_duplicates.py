"""Find near-duplicate images so that a split can keep each group on one side.

Public 2D collections are often aggregates of several sources and hold the same scan more than
once (re-encoded, resized, grey or RGB). A random split then puts copies of one image in training
and test, and the test score measures memory. :func:`near_duplicate_groups` groups images whose
difference hashes are within a Hamming distance, transitively (union-find).

The difference hash (Krawetz's "dHash": grey, resized to ``(hash_size + 1) x hash_size``, one bit
per horizontally adjacent pixel pair) is written here rather than taken from the ``imagehash``
package: it is a few lines of PIL and numpy, and that package would add scipy and PyWavelets to the
project's dependencies for it.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["difference_hash", "hamming_distances", "near_duplicate_groups", "spanning_groups"]

# number of set bits of every byte value
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def difference_hash(path: str | os.PathLike, hash_size: int = 16) -> np.ndarray:
    """The ``hash_size * hash_size``-bit difference hash of an image, packed into bytes.

    Raises:
        ValueError: the file cannot be read as an image; the message names it.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            grey = img.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    except Exception as e:  # PIL raises several types for unreadable files
        raise ValueError(f"cannot read image '{path}' to hash it: {type(e).__name__}: {e}") from e
    pixels = np.asarray(grey, dtype=np.int16)
    return np.packbits(pixels[:, 1:] > pixels[:, :-1])


def hamming_distances(hashes: np.ndarray, index: int) -> np.ndarray:
    """Bit distances between ``hashes[index]`` and every row of ``hashes`` (packed bytes, ``(n, bytes)``)."""
    return _POPCOUNT[np.bitwise_xor(hashes, hashes[index])].sum(axis=1, dtype=np.int32)


def near_duplicate_groups(
    paths: Sequence[str | os.PathLike], max_distance: int = 4, hash_size: int = 16
) -> list[int]:
    """A group id per image: images within ``max_distance`` hash bits of each other share one, transitively.

    Args:
        paths: image files.
        max_distance: largest Hamming distance between difference hashes still counted as a
            near-duplicate (0: identical hashes only).
        hash_size: side of the hash grid (``hash_size ** 2`` bits).

    Returns:
        group ids aligned with ``paths``; a group's id is the index of its first member.
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    if not paths:
        return []
    hashes = np.stack([difference_hash(p, hash_size) for p in paths])
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(paths) - 1):
        close = np.flatnonzero(hamming_distances(hashes[i:], 0) <= max_distance)
        for j in close[close > 0] + i:
            a, b = root(i), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(len(paths))]


def spanning_groups(groups: Sequence[int], sides: Sequence[Hashable]) -> list[dict[Hashable, list[int]]]:
    """The near-duplicate groups whose members lie on more than one side: class folders, split folders.

    Args:
        groups: a group id per image (:func:`near_duplicate_groups`).
        sides: the side of every image, aligned with ``groups`` (its label, its split).

    Returns:
        one ``{side: member indices}`` per group that spans sides, groups in the order of their first
        member, sides in the order they first appear in the group.

    Example::

        >>> spanning_groups([0, 0, 2, 2], ["training", "test", "test", "test"])
        [{'training': [0], 'test': [1]}]
    """
    if len(groups) != len(sides):
        raise ValueError(f"groups and sides must be aligned, got {len(groups)} groups and {len(sides)} sides")
    members: dict[int, dict[Hashable, list[int]]] = {}
    for index, (group, side) in enumerate(zip(groups, sides)):
        members.setdefault(group, {}).setdefault(side, []).append(index)
    return [by_side for by_side in members.values() if len(by_side) > 1]
