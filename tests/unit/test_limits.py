"""Token buckets: a burst, then the rate; never more saved up than the burst; a bounded number of keys."""

from __future__ import annotations

from gateway.limits import KeyedBuckets, TokenBucket


def test_a_bucket_gives_its_burst_then_its_rate_and_saves_up_no_more_than_the_burst() -> None:
    bucket = TokenBucket(rate=8.0, burst=3.0)
    # Any clock reading after the bucket was made; 2**40 keeps the sums below exact (eighths and
    # sixteenths of a second), where a reading of the machine's clock could round half a token
    # plus half a token to just under one (this test failed so, once, in a CI run).
    start = float(2**40)
    assert [bucket.take(start) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(start + 0.0625) is False  # half a token
    assert bucket.take(start + 0.125) is True  # the other half arrived
    assert bucket.take(start + 0.125) is False
    later = start + 3600.0  # an hour idle saves up the burst, not 36,000 tokens
    assert [bucket.take(later) for _ in range(4)] == [True, True, True, False]


def test_keyed_buckets_forget_the_least_recently_seen_key_past_their_bound() -> None:
    buckets = KeyedBuckets(rate=0.001, burst=1.0, max_keys=2)
    assert buckets.take("a") and buckets.take("b")
    assert not buckets.take("a")  # a's one token is spent, and a is now the most recently seen
    assert buckets.take("c")  # three keys: b, least recently seen, is forgotten
    assert buckets.take("b")  # ... so it starts full again
    assert not buckets.take("c")
