"""Faust, fenced: the only package that reaches into Faust's internals.

* :mod:`stream.faust.version`: the faust-streaming releases this package was
  written against, checked before anything is built.
* :mod:`stream.faust.consumer`: the consumer subclass that hands the
  touchpoints topic to the batch pipeline (``stream.engine.pipeline``) and
  fixes Faust's commit path (``docs/upstream/``).
* :mod:`stream.faust.store`: the table's local store, read and written per partition.
* :mod:`stream.faust.app`: the Faust app from settings, its producer, its
  assignment as the web and the watchdog need it, and the bounded worker.

``tests/stream/test_faust_compat.py`` breaks if Faust moves what these rely on.
"""
