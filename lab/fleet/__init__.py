"""``phonekey fleet``: many simulated cars against one keyserver, in worker processes."""
