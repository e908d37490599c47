"""``phonekey demo`` (``make demo``): the staging demo on the embedded default."""
