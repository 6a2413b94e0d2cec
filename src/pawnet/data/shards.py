"""Which photos one of N processes labels: a share chosen by content hash, so N processes
or machines label a folder between them, every photo once, with no coordinator.

A photo is in shard `int(sha256[:16], 16) % N`, where `sha256` is the hex SHA-256 of its
bytes (the same hash `scan` and the splits use), or of its path as given (UTF-8) when it
is not a readable regular file, so files that cannot be read are shared out too. Its path,
its place in the list and the machine play no part.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pawnet.data.checks import file_sha256
from pawnet.errors import ConfigError

Shard = str | tuple[int, int]  # "I/N" or (I, N)


def parse_shard(shard: Shard) -> tuple[int, int]:
    """A shard, checked: "I/N" or (I, N), whole numbers with 0 <= I < N.

    Raises:
        ConfigError: anything else.
    """
    text = "/".join(map(str, shard)) if isinstance(shard, tuple) else shard
    match = re.fullmatch(r"([0-9]+)/([0-9]+)", text.strip()) if isinstance(text, str) else None
    if not match or int(match[1]) >= int(match[2]):
        raise ConfigError(f"shard must be I/N with 0 <= I < N, e.g. 0/4 for the first of 4 "
                          f"shares; received: {shard!r}")
    return int(match[1]), int(match[2])


def shard_key(source: str | Path | bytes) -> int:
    """The number that places a photo in a shard (modulo N): the first 16 hex digits of
    the SHA-256 of its bytes; of its path when it is not a readable regular file."""
    try:
        digest = (hashlib.sha256(source).hexdigest() if isinstance(source, bytes)
                  else file_sha256(source) if stat.S_ISREG(os.stat(source).st_mode)
                  else None)  # a pipe or a device is never opened
    except (OSError, ValueError):  # missing, unreadable, or a name the system refuses
        digest = None
    return int((digest or hashlib.sha256(os.fsencode(source)).hexdigest())[:16], 16)


def in_shard(sources: Sequence[str | Path | bytes], shard: Shard) -> list[int]:
    """The positions, in order, of the sources in shard I of N: those whose `shard_key`
    is I modulo N. Files are hashed on every core; with N = 1, none is read."""
    index, count = parse_shard(shard)
    if count == 1:
        return list(range(len(sources)))
    chunks = [sources[i : i + 256] for i in range(0, len(sources), 256)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        keys = [k for part in pool.map(lambda c: [shard_key(s) for s in c], chunks) for k in part]
    return [i for i, key in enumerate(keys) if key % count == index]
