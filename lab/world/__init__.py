"""The staging world: simulated cars (the real vehicle-agent pieces) and phones at work."""
