from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.settings import Settings
from stream.tools.cli import main


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.broker, s.store, s.partitions, s.web_port) == ("kafka://127.0.0.1:9092", "memory://", 8, 6066)
    monkeypatch.setenv("JOURNEY_BROKER", "kafka://a:1,kafka://b:2")
    monkeypatch.setenv("JOURNEY_PARTITIONS", "3")
    s = Settings()
    assert s.bootstrap_servers == ["a:1", "b:2"] and s.partitions == 3
    assert s.changelog_topic == "journey-customers-changelog"
    assert Settings(**{k.removeprefix("JOURNEY_").lower(): v for k, v in s.to_env().items()}) == s


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("JOURNEY_PROCESSING_GUARANTEE", "exactly_once", "three brokers"),
        ("JOURNEY_PARTITIONS", "0", "greater than or equal to 1"),
        ("JOURNEY_BROKER", "localhost", "not kafka://host:port"),
        ("JOURNEY_WEB_PORT", "http", "valid integer"),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, words: str
) -> None:
    monkeypatch.setenv(var, value)
    result = CliRunner().invoke(main, ["settings"])
    assert result.exit_code == 2
    assert var in result.output and words in result.output


def test_settings_command_lists_every_variable() -> None:
    result = CliRunner().invoke(main, ["settings"])
    assert result.exit_code == 0
    for field in Settings.model_fields:
        assert Settings.env_name(field) in result.output


def test_map_check_good_and_bad(tmp_path: Path) -> None:
    ok = CliRunner().invoke(main, ["map", "check"])
    assert ok.exit_code == 0 and "7 stages" in ok.output and "defected (exit)" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nchannels: [web]\nstages:\n  - name: a\n    stall_after: 2 weeks\n")
    result = CliRunner().invoke(main, ["map", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:5: stall_after must be a positive duration" in result.output


def test_simulate_dry_run_prints_valid_json_lines() -> None:
    result = CliRunner().invoke(main, ["simulate", "-n", "5", "--seed", "1", "--dry-run"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) >= 5 and all(line.startswith("{") for line in lines)


def test_every_flag_shows_its_environment_variable() -> None:
    result = CliRunner().invoke(main, ["simulate", "--help"])
    for var in ("JOURNEY_SIM_CUSTOMERS", "JOURNEY_SIM_SEED", "JOURNEY_SIM_RATE", "JOURNEY_SIM_DUPLICATES"):
        assert var in result.output


def test_a_rocksdb_data_dir_cannot_be_shared_by_two_workers(tmp_path: Path) -> None:
    import subprocess
    import sys
    import textwrap

    holder = textwrap.dedent(
        f"""
        import sys, time
        from stream.tools.cli import _lock_data_dir
        from pathlib import Path
        _lock_data_dir(Path({str(tmp_path)!r}))  # the directory exists: pytest made it
        print("locked", flush=True)
        time.sleep(30)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        env = {"JOURNEY_STORE": "rocksdb://", "JOURNEY_DATA_DIR": str(tmp_path)}
        result = CliRunner().invoke(main, ["worker"], env=env)
        assert result.exit_code == 1
        assert f"another worker uses JOURNEY_DATA_DIR={tmp_path}" in result.output
    finally:
        proc.kill()
        proc.wait()
