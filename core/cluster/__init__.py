"""Ray cluster mode: track and cancel task subprocess trees across nodes (imports ray; the `ray` extra)."""
