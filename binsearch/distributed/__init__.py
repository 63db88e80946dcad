"""A collection sharded over Ray actors, with the surface of :class:`binsearch.Collection`.

Needs the optional extra: ``pip install 'binsearch[distributed]'`` (Ray). Ray is
imported only when a sharded collection is created or opened.

>>> from binsearch.distributed import ShardedCollection
>>> sc = ShardedCollection.create(tmp / "sharded", shards=2, model=None, dim=4)
>>> sc.add(["a", "b"], embeddings=np.eye(2, 4, dtype=np.float32)).added
2
>>> sc.search(embeddings=np.eye(1, 4, dtype=np.float32), k=1)[0].ids
['a']
>>> sc.close()
"""

from binsearch.distributed.build import build_sharded, split
from binsearch.distributed.collection import ShardedCollection
from binsearch.distributed.errors import ShardUnavailable
from binsearch.distributed.shardmap import SHARD_MAP, ShardMap, ShardMapError, is_sharded, route

__all__ = [
    "SHARD_MAP",
    "ShardMap",
    "ShardMapError",
    "ShardUnavailable",
    "ShardedCollection",
    "build_sharded",
    "is_sharded",
    "route",
    "split",
]
