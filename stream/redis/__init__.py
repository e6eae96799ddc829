"""Redis, the worker's one outside store besides Kafka.

* :mod:`stream.redis.client`: the client factory (asyncio, bounded by a timeout).
* :mod:`stream.redis.gate`: the nudge gate: caps, cooldowns and the holdout,
  one Lua script per batch of decisions.
* :mod:`stream.redis.view`: the serving view: each customer's state as a hash
  that the apps read, written behind the batch path.

Neither is the truth: the table is. Both are rebuilt or caught up from it.
"""
