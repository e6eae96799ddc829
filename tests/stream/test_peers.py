from stream.http.peers import FORWARDED_HEADER, MAX_SKEW_MS, PEER_HEADER, peer_headers, verify_peer

NOW = 1_795_503_600_000


def test_a_signature_proves_this_method_and_path_only() -> None:
    h = peer_headers("tok", "GET", "/customers/c1", NOW)
    assert h[FORWARDED_HEADER] == "1" and "tok" not in h[PEER_HEADER]
    sig = h[PEER_HEADER]
    assert verify_peer("tok", "GET", "/customers/c1", sig, NOW + 1000)
    assert not verify_peer("tok", "GET", "/customers/c2", sig, NOW)
    assert not verify_peer("tok", "DELETE", "/customers/c1", sig, NOW)
    assert not verify_peer("other", "GET", "/customers/c1", sig, NOW)


def test_a_signature_expires_and_garbage_is_refused() -> None:
    sig = peer_headers("tok", "GET", "/funnel/local", NOW)[PEER_HEADER]
    assert not verify_peer("tok", "GET", "/funnel/local", sig, NOW + MAX_SKEW_MS + 1)
    assert not verify_peer("tok", "GET", "/funnel/local", sig, NOW - MAX_SKEW_MS - 1)
    for bad in ("", ":", "x:y", f"{NOW}:", f"{NOW}:zz\udcff", "9" * 40 + ":ab"):
        assert not verify_peer("tok", "GET", "/funnel/local", bad, NOW)


def test_without_a_token_only_the_forwarded_mark_is_sent() -> None:
    assert peer_headers(None, "GET", "/x", NOW) == {FORWARDED_HEADER: "1"}
