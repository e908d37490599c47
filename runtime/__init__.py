"""runtime: what every running part takes from the machine it runs on, written once.

The durable SQLite open (``runtime.sqlite``), the configuration file and environment reader with
its one-line, exit-2 refusal (``runtime.settings``), and the console scripts' entry, which names
the extra a part lacks in one line (``runtime.extras``). Standard library only, so every install
can import it; keycore stays free of I/O.
"""
