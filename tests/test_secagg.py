"""Secure aggregation in horizontal runs, tested as the attacker: coordinator + one bank, dropouts, shares."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crypto import ckks, secagg
from fedcredit.channel import Handler, LocalChannel, StateStore
from fedcredit.errors import ConfigError, ProtocolError, SecurityError
from fedcredit.protocols.horizontal import (
    HorizontalJob,
    decode_exact,
    decode_message,
    run_coordinator,
    secagg_plan,
    value_spec,
)
from fedcredit.transport import WireRecord
from simulations.attack_horizontal import run_attack
from simulations.generator import write_bank_files
from simulations.horizontal_sim import make_local_federation

BANKS = ["bank1", "bank2", "bank3"]


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bank_files(tmp_path_factory.mktemp("gen"), n_banks=3, rows_per_bank=1200, test_rows=900, seed=11)


def _train(banks: Mapping[str, Path]) -> dict[str, Path]:
    return {p: banks[p] for p in BANKS}


# --------------------------------------------------------------------------- (a) coordinator + one bank


@pytest.mark.parametrize("min_parties", [None, 2])  # no dropouts allowed (pairwise masks only) / one allowed
def test_coordinator_and_one_bank_cannot_recover_another_banks_update(
    banks: dict[str, Path], tmp_path: Path, min_parties: int | None
) -> None:
    """The colluders hold the coordinator's copy of every ciphertext, the shared CKKS key, the colluder's own
    mask keys, seeds and its shares.  Old scheme: exact recovery.  Secure aggregation: uncorrelated noise."""
    r = run_attack(_train(banks), tmp_path, rounds=2, min_parties=min_parties, colluder="bank2", target="bank1")
    assert not r["dropped"]
    for row in r["rounds"]:
        assert row["old_rel_error"] < 1e-4 and row["old_cosine"] > 0.999999  # main's scheme: the update, exactly
        # noise, far from the truth: |cosine| within 4 sigma of a random direction's (1/sqrt(d)), error huge
        assert abs(row["secagg_cosine"]) < 4 / np.sqrt(r["n_values"]) and row["secagg_rel_error"] > 1e3
        assert row["baseline_own_cosine"] > 0.9  # (what the colluder knows anyway is a better guess)


def test_one_share_of_a_self_mask_seed_says_nothing(banks: dict[str, Path], tmp_path: Path) -> None:
    """The colluder's single share (t = 2) interpolates to a value unrelated to the target's seed."""
    fed = make_local_federation(_train(banks), {p: None for p in BANKS}, tmp_path)
    kept: dict[str, dict[str, bytes]] = {p: {} for p in BANKS}
    for p in BANKS:
        st, put = fed.states[p], fed.states[p].put
        st.put = (lambda k, v, p=p, put=put: (kept[p].__setitem__(k, v), put(k, v))[1])  # type: ignore[method-assign]
    run_coordinator(fed.channel, HorizontalJob(run_id="share", parties=BANKS, rounds=1, newton_rounds=0,
                                               min_parties=2))
    _, own = decode_message(kept["bank1"]["hz-share-sa-own"])
    _, held = decode_message(kept["bank2"]["hz-share-sa-from-bank1"])
    w = secagg.SHARE_BYTES
    for i, tag in enumerate(["stats", "fit-1", "hist"]):
        share = held["b"][w * i : w * (i + 1)]
        assert secagg.combine_unchecked([share]) != own[f"b:{tag}"]
        with pytest.raises(SecurityError, match="1 share"):
            secagg.combine([share], 2, "one share")
    # nor any share on the wire in clear: every secagg bundle travels sealed
    assert all(k.startswith("hz-share-") for k in kept["bank2"])


# --------------------------------------------------------------------------- (d) shares


def test_t_minus_one_shares_do_not_reconstruct_and_t_do() -> None:
    secret = bytes(range(32))
    shares = secagg.share(secret, 3, 5)
    assert len(shares) == 5 and len({s[0] for s in shares}) == 5
    for k in (1, 2):
        with pytest.raises(SecurityError, match=f"{k} share"):
            secagg.combine(shares[:k], 3, "seed")
        assert secagg.combine_unchecked(shares[:k]) != secret
    # information-theoretically hidden: two shares are consistent with ANY secret (another sharing matches them)
    other = secagg.share(bytes(32), 3, 5)
    assert secagg.combine_unchecked([shares[0], shares[1], other[2]]) != secret
    for subset in ([0, 1, 2], [1, 3, 4], [4, 2, 0]):
        assert secagg.combine([shares[i] for i in subset], 3, "seed") == secret
    tampered = bytes([shares[0][0]]) + bytes(32)
    with pytest.raises(SecurityError, match="two different shares"):
        secagg.combine([shares[0], tampered, shares[1]], 3, "seed")


def test_masks_cancel_and_dropout_corrections_are_exact() -> None:
    p = secagg.plan(4, 38)
    keys = {u: secagg.new_tag_secrets() for u in "abcd"}
    pubs = {u: k.public for u, k in keys.items()}
    rng = np.random.default_rng(1)
    n = 4096  # the keys are fresh random: enough entries that the bound below is ~6 sigma, not a coin toss
    x = {u: rng.integers(-(2**23), 2**23, n) for u in "abcd"}
    y = {u: secagg.mask(x[u], u, keys[u], pubs, p, b"ctx", self_mask=True) for u in "abcd"}
    for u in "abcd":  # alone, each masked vector is uniform mod M: no visible relation to x (sd of r ~ 1/64)
        assert abs(np.corrcoef(y[u], x[u])[0, 1]) < 0.1
    corr = secagg.correction(n, p, b"ctx", self_seeds={u: keys[u].self_seed for u in "abc"},
                             dropped_keys={"d": keys["d"].mask_key}, publics={u: pubs[u] for u in "abc"})
    np.testing.assert_array_equal(secagg.unmask(y["a"] + y["b"] + y["c"] + corr, p, "sum"), x["a"] + x["b"] + x["c"])
    with pytest.raises(ConfigError, match="exact bits"):
        secagg.plan(200, 20)


def test_plan_keeps_the_sum_of_a_hundred_banks_inside_the_ckks_slot() -> None:
    job = HorizontalJob(run_id="r", parties=[f"b{i}" for i in range(100)])
    p = secagg_plan(job)
    assert p.limb_bits == 24 and (p.n_parties + 1) * p.modulus // 2 < 2**38
    assert 100 * 2**p.limb_bits <= p.modulus // 2
    assert job.threshold == 50
    with pytest.raises(ConfigError, match="below the secure-aggregation threshold"):
        HorizontalJob.from_dict({"run_id": "r", "parties": BANKS, "min_parties": 1})
    with pytest.raises(ConfigError, match="secagg_threshold"):
        HorizontalJob.from_dict({"run_id": "r", "parties": BANKS, "secagg_threshold": 4})


# --------------------------------------------------------------------------- (b), (c) dropouts


def _failing(h: Handler, method: str, round_idx: int | None = None, tag: str | None = None) -> Handler:
    def handle(m: str, payload: bytes, state: StateStore) -> bytes:
        head = decode_message(payload)[0]
        if m == method and (round_idx is None or head.get("round") == round_idx) and (tag is None or head.get("tag") == tag):
            raise ConnectionError(f"simulated disconnect at {m}")
        return h(m, payload, state)

    return handle


def _run_with(banks: Mapping[str, Path], tmp: Path, failures: Mapping[str, tuple[str, int | None, str | None]],
              run_id: str, min_parties: int = 2) -> tuple[Any, dict[str, list[tuple[str, np.ndarray]]], list[WireRecord],
                                                          dict[str, bytes]]:
    plain: dict[str, list[tuple[str, np.ndarray]]] = {p: [] for p in BANKS}
    fed = make_local_federation(_train(banks), {p: banks["test"] for p in BANKS}, tmp,
                                tap=lambda party, what, v: plain[party].append((what, v)))
    handlers = dict(fed.channel._handlers)
    for p, (m, r, tag) in failures.items():
        handlers[p] = _failing(handlers[p], m, r, tag)
    ch = LocalChannel(handlers, fed.states)
    records: list[WireRecord] = []
    ch.observers.append(records.append)
    kept: dict[str, bytes] = {}
    st, put = fed.states["bank1"], fed.states["bank1"].put
    st.put = lambda k, v: (kept.__setitem__(k, v), put(k, v))[1]  # type: ignore[method-assign]
    job = HorizontalJob(run_id=run_id, parties=BANKS, rounds=3, newton_rounds=0, min_parties=min_parties)
    return run_coordinator(ch, job), plain, records, kept


def _aggregate_sent_in_fit(job: HorizontalJob, records: list[WireRecord], r: int, kept: Mapping[str, bytes],
                           n: int) -> np.ndarray:
    """The unmasked aggregate the coordinator sent out in fit round ``r`` (decrypted with a bank's key)."""
    blob = next(decode_message(x.payload)[1]["model"] for x in records
                if x.sender == "coordinator" and x.receiver == "bank1" and x.tag.startswith("fit")
                and decode_message(x.payload)[0].get("round") == r)
    plan = secagg_plan(job)
    vals = ckks.decrypt_vector(ckks.load_secret(kept[f"hz-{job.run_id}-ckks"]), blob)
    return decode_exact(secagg.unmask(vals, plan, "agg").astype(float), n, value_spec(plan))


@pytest.mark.parametrize("when", ["before_sending", "after_sending"])
def test_bank_dropped_mid_round_the_round_completes_with_the_survivors_sum(
    banks: dict[str, Path], tmp_path: Path, when: str
) -> None:
    failure = ("fit", 2, None) if when == "before_sending" else ("unmask", None, "fit-2")
    res, plain, records, kept = _run_with(banks, tmp_path, {"bank3": failure}, f"drop-{when}")
    assert res.parties == ["bank1", "bank2"] and "simulated disconnect" in res.dropped["bank3"]
    assert res.global_metrics is not None and res.global_metrics["auc"] > 0.6
    job = HorizontalJob(run_id=f"drop-{when}", parties=BANKS, rounds=3, newton_rounds=0, min_parties=2)
    upd = {p: [v for w, v in plain[p] if w == "update"] for p in BANKS}
    n = upd["bank1"][0].shape[0]
    contributed = ["bank1", "bank2"] if when == "before_sending" else BANKS
    want = sum(upd[p][1] for p in contributed)  # round 2's updates of the banks whose masked update arrived
    got = _aggregate_sent_in_fit(job, records, 3, kept, n)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)  # exact: the limbs sum without error
    entry = next(u for u in res.secagg["unmasked"] if u["tag"] == "fit-2")
    if when == "before_sending":
        assert entry["dropped"] == ["bank3"] and entry["survivors"] == ["bank1", "bank2"]
    else:  # bank3's update is in the sum; its self-mask came back from the others' shares
        assert entry["survivors"] == BANKS and entry["revealed_by"] == ["bank1", "bank2"]
    assert len(upd["bank3"]) == (1 if when == "before_sending" else 2)  # and it took no part in round 3
    # the consistency check ran exactly where a bank dropped before sending: one attest hop, to the survivors,
    # each relayed the other's sealed attestation (and its sealed member list) in its unmask request
    attests = [(x.receiver, decode_message(x.payload)[0]["tag"]) for x in records if x.tag == "attest"]
    if when == "before_sending":
        assert sorted(attests) == [("bank1", "fit-2"), ("bank2", "fit-2")]
        unmask = next(x for x in records if x.tag == "unmask" and x.receiver == "bank1"
                      and decode_message(x.payload)[0]["tag"] == "fit-2")
        assert set(decode_message(unmask.payload)[1]) == {"att:bank2", "mem:bank2"}
    else:  # bank3's masked update arrived: nobody dropped out of fit-2, no attest hop
        assert attests == []


def test_too_many_dropouts_fail_the_round_naming_the_banks(banks: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as e:
        _run_with(banks, tmp_path, {"bank2": ("fit", 2, None), "bank3": ("fit", 2, None)}, "too-many")
    msg = str(e.value)
    assert "party 'bank2'" in msg and "party 'bank3'" in msg and "min_parties=2" in msg


def test_unmask_below_threshold_names_the_banks(banks: dict[str, Path], tmp_path: Path) -> None:
    """t = 3 of 3 with min_parties = 3 allows no dropout; t = 2 with one bank failing to reveal and one dropped
    leaves one share: the error names the threshold and the banks."""
    with pytest.raises(ProtocolError) as e:
        _run_with(banks, tmp_path, {"bank3": ("fit", 2, None), "bank2": ("unmask", None, "fit-2")}, "few-shares")
    msg = str(e.value)
    assert "bank2" in msg and "bank3" in msg


def test_a_bank_refuses_to_reveal_both_masks_of_one_bank(banks: dict[str, Path], tmp_path: Path) -> None:
    """A lying coordinator that got bank1's self-mask share for a round, then claims bank1 dropped in that round
    (to get its mask key too and strip every mask off bank1's ciphertext), is refused."""
    from fedcredit.protocols.horizontal import encode_message

    fed = make_local_federation(_train(banks), {p: None for p in BANKS}, tmp_path)
    handlers = dict(fed.channel._handlers)
    inner = handlers["bank2"]
    forged: list[dict[str, Any]] = []

    def bank2(m: str, payload: bytes, state: StateStore) -> bytes:
        out = inner(m, payload, state)
        head = decode_message(payload)[0]
        if m == "unmask" and head["tag"] == "fit-1":
            lie = {**head, "survivors": ["bank2", "bank3"], "dropped": ["bank1"]}
            relayed = decode_message(payload)[1]  # the sealed member lists it holds: the check passes on them
            forged.append(decode_message(inner(m, encode_message(lie, relayed), state))[0])
        return out

    handlers["bank2"] = bank2
    job = HorizontalJob(run_id="liar", parties=BANKS, rounds=1, newton_rounds=0, min_parties=2)
    run_coordinator(LocalChannel(handlers, fed.states), job)
    assert len(forged) == 1  # bank2 revealed by "nobody dropped" and is bound to that survivor set
    assert forged[0]["ok"] is False and forged[0]["kind"] == "ConsistencyCheckFailed", forged[0]
    assert "did not attest" in forged[0]["error"] and "bank1" in forged[0]["error"]


# --------------------------------------------------------------------------- (e) a coordinator lying about survivors


class _Stop(BaseException):
    """Ends the run once the attacker has played (BaseException: the coordinator's re-ask logic does not catch it)."""


def _lying_coordinator(banks: Mapping[str, Path], tmp: Path, parties: list[str], min_parties: int, tag: str,
                       play: Any, members: Mapping[str, list[str]] | None = None,
                       tap: Any = None) -> tuple[dict[str, dict[str, bytes]], dict[str, dict[str, bytes]]]:
    """Run the real protocol up to the first unmask of fit round ``tag``; there the coordinator plays
    ``play(ask)`` instead, where ``ask(bank, method, survivors, dropped, blobs)`` sends one request and returns the
    decoded reply.  It relays every member list the banks sealed to ``bank`` with their vectors (all it has),
    and ``blobs`` besides.  ``members``: the member list the coordinator announces to some banks for ``tag`` (a
    lie).  Returns everything each bank stored (a colluder's whole state: its secrets, its shares) and each bank's
    reply to the fit call of ``tag`` (what the coordinator holds)."""
    from fedcredit.protocols.horizontal import encode_message

    fed = make_local_federation({p: banks[p] for p in parties}, {p: None for p in parties}, tmp, tap=tap)
    kept: dict[str, dict[str, bytes]] = {p: {} for p in parties}
    for p in parties:
        st, put = fed.states[p], fed.states[p].put
        st.put = (lambda k, v, p=p, put=put: (kept[p].__setitem__(k, v), put(k, v))[1])  # type: ignore[method-assign]
    job = HorizontalJob(run_id="lies", parties=parties, rounds=2, newton_rounds=0, min_parties=min_parties)
    sent: dict[str, dict[str, bytes]] = {}

    class Lying(LocalChannel):
        def call_all(self, requests: Mapping[str, tuple[str, bytes]]) -> dict[str, bytes]:
            m, pl = next(iter(requests.values()))  # one hop: the same method and aggregation to every bank
            head = decode_message(pl)[0]
            if m in ("attest", "unmask") and head.get("tag") == tag:
                def ask(bank: str, method: str, survivors: list[str], dropped: list[str],
                        blobs: Mapping[str, bytes] | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
                    head = {"run_id": job.run_id, "tag": tag, "survivors": survivors, "dropped": dropped}
                    relay = {f"mem:{u}": b[f"mem:{bank}"] for u, b in sent.items() if f"mem:{bank}" in b}
                    msg = encode_message(head, {**relay, **(blobs or {})})
                    return decode_message(super(Lying, self).call_all({bank: (method, msg)})[bank])
                ask.sent = sent  # type: ignore[attr-defined]
                play(ask)
                raise _Stop
            if m == "fit" and f"fit-{head.get('round')}" == tag:
                if members:
                    requests = {b: (m, encode_message({**head, "members": members[b]}, decode_message(q)[1])
                                    if b in members else q) for b, (m, q) in requests.items()}
                replies = super().call_all(requests)
                sent.update({b: decode_message(r)[1] for b, r in replies.items()})
                return replies
            return super().call_all(requests)

    with pytest.raises(_Stop):
        run_coordinator(Lying(fed.channel._handlers, fed.states), job)
    return kept, sent


def _held(replies: list[tuple[dict[str, Any], dict[str, bytes]]], kind: str, bank: str) -> int:
    """How many shares of ``bank``'s self-mask seed (``b``) or mask key (``s``) the coordinator collected."""
    return len({b[f"{kind}:{bank}"] for h, b in replies if h.get("ok") and f"{kind}:{bank}" in b})


@pytest.mark.parametrize("order", ["attest_first", "reveal_first"])
def test_a_coordinator_telling_banks_different_survivor_sets_cannot_unmask_a_bank(
    banks: dict[str, Path], tmp_path: Path, order: str
) -> None:
    """bank1 sent its masked update of round 1.  The coordinator tells bank2 (and bank3) that bank1 dropped, to
    collect t = 2 shares of bank1's mask key, and tells bank1 and bank3 nobody dropped, to collect t shares of its
    self-mask seed: with both it strips every mask off bank1's ciphertext.  An honest bank acts on one survivor
    set per aggregation and reveals a mask key share only when a majority attested the same set: whichever it
    asks first, the coordinator ends with fewer than t shares of one of the two, and the banks refuse by name."""
    everyone, lie = ["bank1", "bank2", "bank3"], ["bank2", "bank3"]
    seen: list[tuple[dict[str, Any], dict[str, bytes]]] = []

    def play(ask: Any) -> None:
        def truth(bank: str) -> None:
            seen.append(ask(bank, "unmask", everyone, []))

        def claim_dropped() -> None:
            atts = {b: ask(b, "attest", lie, ["bank1"]) for b in lie}
            seen.extend(atts.values())
            for b in lie:  # relay every attestation it got (they are sealed: it can only forward or withhold)
                relay = {f"att:{u}": r[1][f"att:{b}"] for u, r in atts.items() if r[0]["ok"] and f"att:{b}" in r[1]}
                seen.append(ask(b, "unmask", lie, ["bank1"], relay))

        if order == "attest_first":
            claim_dropped()
            truth("bank1"), truth("bank3")
        else:
            truth("bank1"), truth("bank3")
            claim_dropped()

    _lying_coordinator(banks, tmp_path, everyone, 2, "fit-1", play)
    b_shares, s_shares = _held(seen, "b", "bank1"), _held(seen, "s", "bank1")
    assert min(b_shares, s_shares) < 2, (b_shares, s_shares)  # never t of both: bank1's update stays masked
    refusals = [h for h, _ in seen if not h["ok"]]
    # a bank that refuses leaves the run (its secure-aggregation material is deleted): later asks find nothing
    assert refusals and refusals[0]["kind"] == "ConsistencyCheckFailed", refusals
    assert all(h["kind"] == "ConsistencyCheckFailed" or "before this bank contributed" in h["error"] for h in refusals)
    assert any("party 'bank3'" in h["error"] and "refusing a second survivor set" in h["error"] for h in refusals)
    if order == "reveal_first":  # bank2 alone attested "bank1 dropped": below the quorum, it reveals nothing
        assert s_shares == 0 and any("attested by ['bank2']" in h["error"] for h in refusals)


def test_four_banks_split_into_two_groups_of_t_each_refuse(tmp_path: Path) -> None:
    """4 banks, t = 2: two groups of two, each told the other pair dropped, would each give t shares -- of one
    pair's mask keys and of the other's self-mask seeds -- if t attestations sufficed.  The quorum is a majority
    (3): each bank sees two attesters of its set (and the other pair's attestations do not match it)."""
    four = write_bank_files(tmp_path / "gen", n_banks=4, rows_per_bank=500, test_rows=300, seed=3)
    parties = ["bank1", "bank2", "bank3", "bank4"]
    assert HorizontalJob(run_id="q", parties=parties, min_parties=3).view_quorum == 3
    with pytest.raises(ConfigError, match="consistency quorum"):  # 2 survivors could never pass the check
        HorizontalJob.from_dict({"run_id": "q", "parties": parties, "min_parties": 2})
    seen: list[tuple[dict[str, Any], dict[str, bytes]]] = []
    views = {"bank1": (["bank1", "bank2", "bank3"], ["bank4"]), "bank3": (["bank1", "bank2", "bank3"], ["bank4"]),
             "bank2": (["bank1", "bank2", "bank4"], ["bank3"]), "bank4": (["bank1", "bank2", "bank4"], ["bank3"])}

    def play(ask: Any) -> None:
        atts = {b: ask(b, "attest", *views[b]) for b in parties}
        assert all(r[0]["ok"] for r in atts.values())  # each bank attests the (first) set it is told
        for b in parties:  # the coordinator relays every attestation addressed to b, the other group's too
            relay = {f"att:{u}": r[1][f"att:{b}"] for u, r in atts.items() if f"att:{b}" in r[1]}
            seen.append(ask(b, "unmask", *views[b], relay))

    _lying_coordinator(four, tmp_path / "fed", parties, 3, "fit-1", play)
    assert all(h["ok"] is False and h["kind"] == "ConsistencyCheckFailed" for h, _ in seen), seen
    assert "attested by ['bank1', 'bank3']" in seen[0][0]["error"] and "a different set by ['bank2']" in seen[0][0]["error"]
    assert not any(b for _, b in seen)  # not one share: with t = 2 attesters bank4's seed and key would both be out


@pytest.mark.parametrize("checked", [True, False])
def test_a_bank_told_to_mask_only_with_a_colluder_is_not_stripped(
    banks: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checked: bool
) -> None:
    """The coordinator tells bank1 that fit-1's members are bank1 and bank2 (the colluder; t = 2, so bank1 agrees)
    and tells bank3 the truth.  Nobody "dropped", so bank3 would reveal its share of bank1's self-mask seed; with
    the colluder's own share that is t, and the colluder's mask key removes bank1's only pairwise mask: bank1's
    ciphertext, decrypted with the colluder's CKKS key, is its update.  Control (``checked=False``, the member
    check switched off): the attack recovers the update exactly.  The real bank refuses: bank1's member list,
    sealed to bank3 with its vector, is not bank3's."""
    from fedcredit.protocols import horizontal as hz

    if not checked:
        monkeypatch.setattr(hz._Party, "_check_members", lambda *a, **k: None)
    seen: list[tuple[dict[str, Any], dict[str, bytes]]] = []
    plain: list[np.ndarray] = []
    job = HorizontalJob(run_id="lies", parties=BANKS, rounds=2, newton_rounds=0, min_parties=2)
    kept, sent = _lying_coordinator(
        banks, tmp_path, BANKS, 2, "fit-1", lambda ask: seen.append(ask("bank3", "unmask", BANKS, [])),
        members={"bank1": ["bank1", "bank2"]},
        tap=lambda party, what, v: plain.append(v) if (party, what) == ("bank1", "update") else None)
    (head, got), = seen
    if checked:
        assert head["ok"] is False and head["kind"] == "ConsistencyCheckFailed", head
        assert "sealed by survivor 'bank1'" in head["error"], head  # bank1 masked without bank3: sealed it nothing
        assert not got  # not one share
        return
    # the attack, as the coordinator with the colluder bank2's whole state
    st2 = kept["bank2"]
    w, i = secagg.SHARE_BYTES, hz.secagg_tags(job).index("fit-1")
    own2 = decode_message(st2.get("hz-lies-sa-own") or b"")[1]
    from1 = decode_message(st2.get("hz-lies-sa-from-bank1") or b"")[1]
    seed1 = secagg.combine([got["b:bank1"], from1["b"][w * i : w * (i + 1)]], 2, "bank1's self-mask seed")
    blob, plan = sent["bank1"]["update"], secagg_plan(job)
    vals = ckks.decrypt_vector(ckks.load_secret(st2.get("hz-lies-ckks") or b""), blob)
    corr = secagg.correction(len(vals), plan, hz.secagg_context(job, "fit-1"), self_seeds={"bank1": seed1},
                             dropped_keys={"bank2": own2["s:fit-1"]},
                             publics={"bank1": from1["pub"][32 * i : 32 * (i + 1)]})
    n = plain[0].shape[0]
    est = decode_exact(secagg.unmask(vals + corr, plan, "stripped").astype(float), n, value_spec(plan))
    np.testing.assert_allclose(est, plain[0], rtol=0, atol=1e-9)  # bank1's update, exactly


def test_member_lists_that_differ_are_refused_by_name_and_a_replayed_one_fails_to_open(tmp_path: Path) -> None:
    """4 banks: bank1 is told fit-1's members are bank1..bank3, the others all four.  bank3, asked to unmask,
    opens bank1's sealed list (its size and digest), sees it is not its own and says so.  Relaying another bank's true list to bank4
    as bank1's does not open: sender and recipient are in its authenticated data."""
    four = write_bank_files(tmp_path / "gen", n_banks=4, rows_per_bank=500, test_rows=300, seed=3)
    parties = ["bank1", "bank2", "bank3", "bank4"]
    seen: list[tuple[dict[str, Any], dict[str, bytes]]] = []

    def play(ask: Any) -> None:
        seen.append(ask("bank3", "unmask", parties, []))
        seen.append(ask("bank4", "unmask", parties, [], {"mem:bank1": ask.sent["bank2"]["mem:bank4"]}))

    _lying_coordinator(four, tmp_path / "fed", parties, 3, "fit-1", play, members={"bank1": ["bank1", "bank2", "bank3"]})
    (h3, b3), (h4, b4) = seen
    assert h3["kind"] == "ConsistencyCheckFailed" and not b3, h3
    assert ("survivor 'bank1' masked 'fit-1' of run 'lies' among a different member list (3 banks)" in h3["error"]
            and "['bank1', 'bank2', 'bank3', 'bank4']" in h3["error"]), h3
    assert h4["kind"] == "ConsistencyCheckFailed" and "failed to open" in h4["error"] and not b4, h4
