"""The cluster view: every node's status and one audit timeline, kept in the cluster's Redis.

Each supervisor with a `[cluster]` table publishes (publisher.py) its status and a copy of
every audit event to the cluster's Redis; relayqctl reads them back from any node
(view.py). Where the data lives and how a node connects: link.py. No new protocol and no
new server: the Redis every node already reaches carries it all.
"""
