"""The worker's engine, with no Faust and no Redis in it.

* :mod:`stream.engine.pipeline`: fetches through the agent, rests in order, commit positions.
* :mod:`stream.engine.lifecycle`: owned partitions, their progress, and the listeners' scan.
* :mod:`stream.engine.watchdog`: progress into readiness, counts and exits.
* :mod:`stream.engine.batching`: output records produced as whole batches.
* :mod:`stream.engine.codec`: the stored format of a customer's value.
* :mod:`stream.engine.state_cache`: decoded states kept between batches.
* :mod:`stream.engine.deadlines`: customers by next deadline, per partition.
* :mod:`stream.engine.stage_counts`: customers per stage, the funnel's figures.
* :mod:`stream.engine.metrics`: the Prometheus metrics, on a registry passed in.
* :mod:`stream.engine.partitioning`: Kafka's murmur2 partition of a key.
* :mod:`stream.engine.repeat_log`: repeated log lines held back with a count.
"""
