"""``phonekey proxy``: the fault-injecting TCP proxy and its control API."""
