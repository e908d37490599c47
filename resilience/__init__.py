"""resilience: what keeps a running part standing when a dependency fails or floods.

The circuit breaker (``resilience.breaker``) and its Prometheus collector
(``resilience.breaker_metrics``), our own event loop's lag as a clock that leaves it out of a
dependency's call times (``resilience.loop_lag``), adaptive client throttling, the retry budget
and request deadlines (``resilience.overload``), and waiting on a condition without polling
(``resilience.waiting``). The keyserver, the vehicle agent and the phone share it; time and
randomness are injected. Standard library and asyncio only, but for ``breaker_metrics``, which
needs prometheus-client (the keyserver's and the agent's extras carry it; the phone's does not).
"""
