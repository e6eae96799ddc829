import logging

from stream.engine.repeat_log import RepeatFilter


def record(msg: str, *args: object, level: int = logging.ERROR, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_error_passes_once_per_interval_with_a_count() -> None:
    now = [0.0]
    f = RepeatFilter(10.0, clock=lambda: now[0])
    assert f.filter(record("Unable connect to node with id %s: %s", 1, "refused"))
    passed = 0
    for i in range(1000):
        now[0] = i * 0.005
        passed += f.filter(record("Unable connect to node with id %s: %s", 1, "refused"))
    assert passed == 0
    now[0] = 10.0
    r = record("Unable connect to node with id %s: %s", 1, "refused")
    assert f.filter(r)
    assert (
        r.getMessage() == "Unable connect to node with id 1: refused [1000 more like this in the last 10 s]"
    )
    now[0] = 25.0
    r = record("Unable connect to node with id %s: %s", 1, "refused")
    assert f.filter(r) and r.getMessage() == "Unable connect to node with id 1: refused"


def test_other_kinds_and_info_lines_pass() -> None:
    f = RepeatFilter(10.0, clock=lambda: 0.0)
    assert f.filter(record("a %s", 1))
    assert f.filter(record("b %s", 1))
    assert f.filter(record("a %s", 1, name="faust"))
    assert f.filter(record("a %s", 1, level=logging.WARNING))
    assert all(f.filter(record("a %s", 1, level=logging.INFO)) for _ in range(5))
    assert not f.filter(record("a %s", 2))


def test_every_handler_gets_the_same_answer_and_the_message_formats(capsys: object) -> None:
    import io

    now = [0.0]
    f = RepeatFilter(10.0, clock=lambda: now[0])
    out1, out2 = io.StringIO(), io.StringIO()
    logger = logging.getLogger("test.repeat")
    logger.propagate = False
    handlers = [logging.StreamHandler(out1), logging.StreamHandler(out2)]
    for h in handlers:
        h.addFilter(f)
        logger.addHandler(h)
    try:
        for _ in range(3):
            logger.error("Unable %s: %s", 1, "100% refused")
        logger.error("no args, 100%")
        logger.error("no args, 100%")
        now[0] = 11.0
        logger.error("Unable %s: %s", 1, "100% refused")
        logger.error("no args, 100%")
    finally:
        for h in handlers:
            logger.removeHandler(h)
    want = (
        "Unable 1: 100% refused\nno args, 100%\n"
        "Unable 1: 100% refused [2 more like this in the last 11 s]\n"
        "no args, 100% [1 more like this in the last 11 s]\n"
    )
    assert out1.getvalue() == want and out2.getvalue() == want
