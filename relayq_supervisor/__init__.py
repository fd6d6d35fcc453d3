"""relayq-supervisor: one process that owns Redis and the relayq workers on a node."""
__version__ = "0.1.0"
