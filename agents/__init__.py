"""The agents: they move data between Kafka, the table, Redis and the metrics,
and decide nothing the core (``models/``) does not. Built and wired by
``stream.worker.build_worker``."""
