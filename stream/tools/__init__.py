"""What people and scripts run beside the worker: the ``journey`` command
line (:mod:`stream.tools.cli`), the Kafka admin and producer helpers
(:mod:`stream.tools.kafka`, kafka-python: never inside the worker's loop),
and the persona simulator (:mod:`stream.tools.simulator`)."""
