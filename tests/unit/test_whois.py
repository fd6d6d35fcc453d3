"""Cross-node attribution's pure parts: client addresses as Redis prints them, the answer's
digest, and how the audit review shows a remote sender, an unanswered question, and a late
answer joined to its denial."""
from __future__ import annotations

from relayq_supervisor.audit import review
from relayq_supervisor.cluster.whois import answer_channel, ask_channel, believed, digest, split_addr
from relayq_supervisor.cluster.whois_ask import WhoisAsker

DENIAL = {"ts": "2026-11-26T12:00:03.120Z", "event": "redis_denied", "id": "d1", "program": "redis",
          "command": "shutdown", "user": "default", "client_addr": "10.0.0.2:51234", "count": 1}
SENDER = {"pid": 14479, "comm": "redis-cli", "cmdline": ["redis-cli", "-h", "redis-node", "shutdown"],
          "alive": False, "node": "n2", "ancestry": [{"pid": 14470, "comm": "sh", "cmdline": ["/bin/sh", "job.sh"]}]}


def test_client_addresses_in_every_form_redis_prints():
    assert split_addr("10.0.0.2:51234") == ("10.0.0.2", 51234)
    assert split_addr("[fd00::2]:51234") == split_addr("fd00::2:51234") == ("fd00::2", 51234)
    assert split_addr("::ffff:10.0.0.2:51234") == ("10.0.0.2", 51234)
    assert split_addr("/run/redis.sock:0") is None and split_addr("") is None


def test_channels_and_digest():
    assert ask_channel("n2") == "relayq-cluster:whois:ask:n2"
    assert answer_channel("n1") == "relayq-cluster:whois:answer:n1"
    assert digest(b"a") != digest(b"b") and len(digest(b"a")) == 16


def test_an_answer_becomes_a_sender_with_its_node_or_a_note():
    sender, note = WhoisAsker.sender_of({"node": "n2", "sender": dict(SENDER)})
    assert (sender["node"], note) == ("n2", "")
    sender, note = WhoisAsker.sender_of({"node": "n2", "sender": None, "note": "no process of n2 held it"})
    assert (sender, note) == (None, "node n2: no process of n2 held it")


def test_a_remote_sender_is_shown_with_its_node_and_lineage():
    line = review.format_event(dict(DENIAL, sender=SENDER))
    assert line == ("12:00:03.120 redis DENIED shutdown by user default from n2 pid 14479 redis-cli -h redis-node "
                    "shutdown <- pid 14470 /bin/sh job.sh (10.0.0.2:51234)")


def test_no_answer_and_an_outsider_say_so():
    line = review.format_event(dict(DENIAL, sender=None, note="node n2 did not answer within 1 s"))
    assert line.endswith("from 10.0.0.2:51234 (node n2 did not answer within 1 s)")
    note = "no relayq node holds 10.0.0.9:40000 (not a cluster member?)"
    assert review.format_event(dict(DENIAL, client_addr="10.0.0.9:40000", sender=None, note=note)).endswith(
        f"from 10.0.0.9:40000 ({note})")


def test_a_late_answer_is_joined_to_its_denial():
    late = {"ts": "2026-11-26T12:00:09.000Z", "event": "attribution", "denial": "d1", "program": "redis",
            "command": "shutdown", "client_addr": "10.0.0.2:51234", "sender": SENDER}
    events = [dict(DENIAL, sender=None, note="node n2 did not answer within 1 s"), late]
    joined = [review.join_attribution(e, review.attributions_by_denial(events)) for e in events]
    assert joined[0]["sender"]["node"] == "n2" and joined[0]["attributed_late"]
    assert "(node n2 did not answer within 1 s; answered later: n2 pid 14479 redis-cli" in review.format_event(joined[0])
    assert "(denial d1) was by n2 pid 14479" in review.format_event(joined[1])
    # a denial without a late answer, or of another id, is left alone
    other = dict(DENIAL, id="d2", sender=None, note="x")
    assert review.join_attribution(other, review.attributions_by_denial(events)) is other


def test_an_answer_is_believed_from_the_address_asked_or_another_the_node_alone_holds():
    claims = {"10.0.0.2": {"n2"}, "fd00::2": {"n2"}, "10.0.0.3": {"n3"}, "10.0.0.7": {"n2", "n3"}}
    assert believed("10.0.0.2", "n2", "10.0.0.2", claims)
    assert believed("fd00::2", "n2", "10.0.0.2", claims)             # n2's IPv6 client, n2's IPv4 link
    assert not believed("10.0.0.2", "n2", "10.0.0.3", claims)        # n3's connection, saying it is n2
    assert not believed("10.0.0.2", "n3", "10.0.0.3", claims)        # n3 answering for n2's address
    assert not believed("10.0.0.7", "n2", "10.0.0.2", claims)        # claimed twice: only from itself
    assert believed("10.0.0.7", "n3", "10.0.0.7", claims)
    assert not believed("10.0.0.9", "n2", "10.0.0.2", claims)        # nobody's


def test_late_answers_are_joined_in_one_pass_within_their_window():
    def at(second, **fields):
        return {"ts": f"2026-11-26T12:00:{second:02d}.000Z", **fields}
    events = [at(0, event="redis_denied", id="d1", sender=None, note="node n2 did not answer within 1 s"),
              at(1, event="spawn", program="rqworker"),
              at(5, event="attribution", denial="d1", sender=SENDER),
              at(6, event="redis_denied", id="d2", sender=None, note="x")]
    shown = list(review.with_late_answers(events, window_s=10))
    assert [original for original, _ in shown] == events           # order kept, originals untouched
    assert shown[0][1]["sender"]["node"] == "n2" and shown[0][1]["attributed"]["denial"] == "d1"
    assert shown[3][1] is events[3]
    # an answer later than the window is not joined (the denial was already shown)
    far = [events[0], at(59, event="attribution", denial="d1", sender=SENDER)]
    assert list(review.with_late_answers(far, window_s=10))[0][1] is events[0]
