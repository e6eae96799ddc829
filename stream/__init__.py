"""The streaming side: everything that moves the core (``models/``) through Kafka.

* :mod:`stream.settings`: the one settings object, from ``JOURNEY_*`` variables.
* :mod:`stream.worker`: the composition root; :func:`stream.worker.build_worker`
  makes every part of a worker.
* :mod:`stream.engine`: the batch pipeline, the partition lifecycle and what
  is kept per partition (no Faust, no Redis).
* :mod:`stream.faust`: the only package that touches Faust's internals.
* :mod:`stream.redis`: the nudge gate and the serving view.
* :mod:`stream.http`: the HTTP API, one module per resource.
* :mod:`stream.tools`: the command line, Kafka admin tasks, the simulator.
* :mod:`stream.errors`: the package's exceptions, under one root.

Nothing in ``models/`` depends on this package; ``agents/`` uses it.
"""
