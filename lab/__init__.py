"""The lab: the ``phonekey`` command and everything that runs the system to prove it, one
subpackage per part — ``world`` and ``fleet`` (simulated cars and phones), ``stack`` (the local
staging stack), ``drill`` (the chaos drills), ``bench``, ``demo``, ``proxy`` (the fault proxy),
``processes`` (real server processes). What they share sits here, once: ``api`` (REST calls),
``events`` (the event log and its readers), ``stats`` (the percentile), ``errors``, ``cli_types``.
It installs with the ``lab`` extra; no running part (keyserver, agent, phone) imports it."""
