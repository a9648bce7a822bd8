"""Use cases built on plan/ and gcp/: up, destroy, init, cost, and what they share."""
