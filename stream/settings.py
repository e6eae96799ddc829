"""The one settings object: every knob, its environment variable, its default.

Each field reads ``JOURNEY_<FIELD>`` (``broker`` from ``JOURNEY_BROKER``...).
``journey settings`` prints the effective values; README.md lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Tracker configuration from ``JOURNEY_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="JOURNEY_", frozen=True, extra="ignore")

    broker: str = Field(
        "kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers, comma-separated, each kafka://host:port",
    )
    app_id: str = Field("journey", description="Faust app id: the consumer group and table prefix")
    store: str = Field(
        "memory://",
        description="Table store: memory:// (rebuilt from the changelog at start) or rocksdb://",
    )
    data_dir: Path = Field(Path(".journey-data"), description="Where a worker keeps RocksDB tables")
    partitions: int = Field(8, ge=1, le=1024, description="Partitions of the touchpoints topic and table")
    replication_factor: int = Field(1, ge=1, description="Replication of the topics the tracker creates")
    standby_replicas: int = Field(
        1,
        ge=0,
        description="Standby copies of each table partition kept by other workers of the group (Faust's "
        "table_standby_replicas): a worker that takes a partition over reads only the changelog's tail",
    )
    processing_guarantee: Literal["at_least_once"] = Field(
        "at_least_once",
        description="at_least_once with idempotent state; Faust's exactly_once is not supported",
    )
    touchpoints_topic: str = Field("touchpoints", description="Topic the apps emit touchpoint events to")
    transitions_topic: str = Field("journey-transitions", description="Topic of stage transitions")
    dlq_topic: str = Field("touchpoints-dlq", description="Dead-letter topic for refused events")
    stalls_topic: str = Field("journey-stalls", description="Topic of stall and recovered records")
    drift_topic: str = Field("journey-drift", description="Topic of churn_risk records")
    nudges_topic: str = Field("nudges", description="Topic of nudges for the delivery service")
    held_out_topic: str = Field(
        "nudges-held-out", description="Topic of nudges held back from the holdout group (for lift)"
    )
    outcomes_topic: str = Field("nudge-outcomes", description="Topic of nudge outcome records")
    erasures_topic: str = Field(
        "journey-erasures", description="Topic of erased records, for downstream systems to erase theirs"
    )
    role: Literal["active", "shadow"] = Field(
        "active",
        description="Blue/green: this group's role while Redis names no active group (journey promote "
        "names one); a shadow writes no serving view and sends no nudge",
    )
    identities_topic: str = Field(
        "journey-identities",
        description="Topic auditing identity stitching: every merge of an anonymous id into a known "
        "customer (both ids, both stages before, the stage after) and every refused link",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis for nudge caps, cooldowns and de-duplication"
    )
    redis_prefix: str = Field("journey:", description="Prefix of every Redis key the tracker writes")
    redis_timeout_s: float = Field(
        0.5, gt=0, description="A Redis call slower than this counts as Redis down (nudges wait and retry)"
    )
    view_prefix: str = Field(
        "journey:view:", description="Prefix of the serving view hashes in Redis (key: prefix + customer id)"
    )
    nudge_outbox_max: int = Field(
        100_000,
        ge=1,
        description="Nudges waiting for the gate (Redis, quiet hours) a worker holds in memory; beyond it "
        "they stay in the table (counted), the worker is unready, and the partition is rescanned once "
        "the outbox has room again",
    )
    view_ttl_s: int = Field(
        30 * 86_400,
        ge=0,
        description="TTL of a customer's serving-view hash, renewed on each change; 0: no serving view",
    )
    view_max_pending: int = Field(
        200_000,
        ge=1,
        description="Customers waiting for Redis beyond this: dropped, and the owned partitions rewritten "
        "from the store when Redis is back",
    )
    view_retry_s: float = Field(2.0, gt=0, description="While Redis is down, how often the view tries again")
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token for every endpoint but /metrics and /health; unset: the API serves on "
        "127.0.0.1 only",
    )
    segment_write_key: SecretStr | None = Field(
        None,
        description="The write key Segment's SDKs send (Basic auth) to the /v1 tracking API; unset: the "
        "API token is the write key, and without a token any key is taken (127.0.0.1 only)",
    )
    api_max_events: int = Field(500, ge=1, le=100_000, description="Events one POST /events may carry")
    api_max_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Bytes one POST /events body may have"
    )
    api_produce_timeout_s: float = Field(
        10.0, gt=0, description="POST /events answers 503 if the broker has not taken its events by then"
    )
    clock_tick_s: float = Field(
        1.0, gt=0, le=60, description="How often the worker checks stall, inactivity and nudge deadlines"
    )
    map_path: Path | None = Field(None, description="Journey map YAML; unset: the shipped default map")
    max_event_bytes: int = Field(64 * 1024, ge=256, description="Larger messages are dead-lettered")
    max_future_s: float = Field(
        86_400.0,
        ge=0,
        description="An event time later than its Kafka record's timestamp (or, over HTTP, the worker's "
        "clock) by more than this is refused as in_future",
    )
    batch_size: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Records one fetch hands the worker at most (one fetch, one batch)",
    )
    state_cache_size: int = Field(
        100_000, ge=0, description="Decoded customer states a worker keeps between batches (0: none)"
    )
    gc_threshold: int = Field(
        50_000,
        ge=0,
        description="Python's cyclic GC runs after this many new container objects (Python's default is "
        "700); the worker freezes its start-up objects out of the GC too. 0: Python's defaults, no freeze",
    )
    commit_interval_s: float = Field(
        2.8, gt=0, description="How often the worker commits the offsets it has fully processed"
    )
    stall_unready_s: float = Field(
        60.0,
        gt=0,
        description="An owned partition with lag and no progress (or processed records not committed) "
        "for this long makes the worker unready, logged and counted",
    )
    stall_exit_s: float = Field(
        300.0, gt=0, description="...and for this long makes the worker exit (status 75) for a restart"
    )
    watchdog_interval_s: float = Field(
        5.0, gt=0, description="How often the worker checks its partitions and that its topics exist"
    )
    stop_timeout_s: float = Field(
        15.0,
        gt=0,
        description="SIGTERM or Ctrl-C stops the worker within this long in any state; a batch that cannot "
        "finish by then is left uncommitted (exit status 75)",
    )
    web_bind: str = Field("127.0.0.1", description="Address the worker's web server binds to")
    web_host: str = Field(
        "127.0.0.1", description="Host name other workers use to reach this one; empty: this host's name"
    )
    web_port: int = Field(6066, ge=1, le=65535, description="Port of the worker's web server")
    session_timeout_s: float = Field(
        60.0, gt=0, description="Kafka group session timeout: how long a dead worker holds its partitions"
    )
    heartbeat_interval_s: float = Field(3.0, gt=0, description="Kafka group heartbeat interval")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Worker log level")

    @field_validator("processing_guarantee", mode="before")
    @classmethod
    def _no_exactly_once(cls, value: object) -> object:
        if value == "exactly_once":
            raise ValueError(
                "exactly_once is not supported: Faust's transactional mode has open bugs and needs "
                "three brokers; at_least_once with idempotent state gives the same final state"
            )
        return value

    @field_validator("broker")
    @classmethod
    def _broker_urls(cls, value: str) -> str:
        for part in value.split(","):
            host = part.strip().removeprefix("kafka://")
            if ":" not in host or not host.rsplit(":", 1)[1].isdigit():
                raise ValueError(f"{part.strip()!r} is not kafka://host:port")
        return value

    @model_validator(mode="after")
    def _exit_after_unready(self) -> Settings:
        if self.stall_exit_s <= self.stall_unready_s:
            raise ValueError(
                f"JOURNEY_STALL_EXIT_S ({self.stall_exit_s:g}) must be longer than "
                f"JOURNEY_STALL_UNREADY_S ({self.stall_unready_s:g})"
            )
        return self

    @property
    def bootstrap_servers(self) -> list[str]:
        """The broker list as host:port strings, for kafka-python and aiokafka."""
        return [p.strip().removeprefix("kafka://") for p in self.broker.split(",")]

    @property
    def token(self) -> str | None:
        """The API token's value, None when unset or empty."""
        return self.api_token.get_secret_value() or None if self.api_token is not None else None

    @property
    def write_key(self) -> str | None:
        """The write key the /v1 tracking API checks: its own, else the API token, else none."""
        own = self.segment_write_key.get_secret_value() if self.segment_write_key is not None else ""
        return own or self.token

    @property
    def changelog_topic(self) -> str:
        """Faust's name for the customers table changelog."""
        return f"{self.app_id}-customers-changelog"

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"JOURNEY_{field.upper()}"

    def to_env(self) -> dict[str, str]:
        """These settings as the environment variables that reproduce them."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                out[self.env_name(name)] = str(value)
        return out
