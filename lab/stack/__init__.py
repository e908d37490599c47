"""``phonekey stack``: every process of a deployment on one machine, on loopback."""
