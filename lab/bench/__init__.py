"""``phonekey bench``: benchmarks against a ceiling measured in the same run, and the surge."""
