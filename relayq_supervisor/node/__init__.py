"""One node's supervisor: `Node` (assembly.py) wires the arbiter to the loop's event
sources; the other modules here are its pieces."""
from relayq_supervisor.node.assembly import Node, doctor_target

__all__ = ["Node", "doctor_target"]
