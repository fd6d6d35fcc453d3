"""Where the cluster view lives in Redis, and how a node connects to it.

Every key starts with `relayq-cluster:`; node N, logged in as its own ACL user
`relayq-node-N` (kinds/redis/acl.py), may write only its own keys, and read the rest
(on Redis 6.x, as `relayq-view-N`); once the Redis node declares other nodes, the workers'
`default` user may write none of them:
- `relayq-cluster:nodes`: a sorted set, node name -> the epoch it was last written: the
  Redis node's declared members ([cluster] nodes), written by the Redis node, and any node
  that publishes with the workers' credentials, written by itself; a name without a
  status key is not shown;
- `relayq-cluster:node:<node>`: that node's status (JSON), kept NODE_KEEP_S after its last
  heartbeat, so its age comes from Redis' own TTL and not from the clocks of two nodes;
- `relayq-cluster:why:<node>`: a hash, program name -> how its last run ended (JSON);
- `relayq-cluster:audit:<node>`: that node's audit events, a stream capped so that all the
  nodes' streams together hold about STREAM_MAXLEN. One stream per node, merged on read,
  because Redis cannot check a field of an entry: in a shared stream any node could add
  entries in another's name, or trim them; per node, the key says who wrote each entry.
- `relayq-cluster:whois:*`: channels, cluster/whois.py.
"""
from __future__ import annotations

from relayq_supervisor.errors import RelayqError

PREFIX = "relayq-cluster:"
NODES_KEY = PREFIX + "nodes"
STREAM_PREFIX = PREFIX + "audit:"
STREAM_MAXLEN = 1_000_000           # all the nodes' streams together (XADD MAXLEN ~: about this many)
STREAM_MIN_PER_NODE = 10_000        # each node's share, however many nodes
NODE_KEEP_S = 86400                 # a node silent for a day leaves the view
STALE_INTERVALS = 3                 # silent for this many heartbeat intervals: stale
NODE_USER_PREFIX = "relayq-node-"   # kinds/redis/acl.py creates one per node on the Redis node


def node_key(node: str) -> str:
    return f"{PREFIX}node:{node}"


def why_key(node: str) -> str:
    return f"{PREFIX}why:{node}"


def stream_key(node: str) -> str:
    return STREAM_PREFIX + node


def stream_maxlen(nodes: int) -> int:
    """Each node's cap when `nodes` publish: the total stays about STREAM_MAXLEN."""
    return max(STREAM_MIN_PER_NODE, STREAM_MAXLEN // max(1, nodes))


def node_user(node: str) -> str:
    return NODE_USER_PREFIX + node


class ClusterUnreachable(RelayqError):
    """The cluster's Redis does not answer (relayqctl exit status 1)."""
