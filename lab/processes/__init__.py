"""Real server processes of our own: redis-server, Sentinel, the keyserver, aiohttp apps."""
