"""Routing, discovery validation, operations, errors, faults and the request log."""
