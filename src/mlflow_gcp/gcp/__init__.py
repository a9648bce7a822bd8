"""Every Google API call of the control plane: one module per API, one waiter, one error table.

Functions take a `Clients` (gcp.clients) and return plain dicts or small dataclasses; `get_*`
returns None for a missing resource, `create_*` tolerates AlreadyExists when asked, `delete_*`
tolerates NotFound.
"""
