"""The fault suite's pure parts: the wait for a chunk closed after a moment (read from the
host's `find -printf '%T@ %p'` listing), and which lab each scenario runs in."""

from __future__ import annotations

import pytest

from tests.faults.bluesky import created_between
from tests.faults.run import by_lab, lab_source
from tests.faults.scenarios import Scenario, all_scenarios, chunk_closed_after

LISTING = [
    "1795000000.5 /srv/collector/data/2026-11-18/10/collector2_2026-11-18_10-05.jsonl",
    "1795000059.9 /srv/collector/data/2026-11-18/10/collector2_2026-11-18_10-06.jsonl.part",
    "1795000070.0 /srv/collector/data/.collector/stream_status.json",
]


def test_a_closed_chunk_written_after_the_moment_counts() -> None:
    assert chunk_closed_after(LISTING, 1_795_000_000.0)


def test_open_chunks_state_files_and_older_chunks_do_not() -> None:
    assert not chunk_closed_after(LISTING, 1_795_000_000.5)
    assert not chunk_closed_after(LISTING[1:], 0.0)
    assert not chunk_closed_after([], 0.0)
    assert not chunk_closed_after(["garbage", "x y.jsonl"], 0.0)


def _scenario(name: str, lab: str = "") -> Scenario:
    return Scenario(name, name, lambda lab: None, lab=lab)


def test_scenarios_are_grouped_by_lab_in_their_order() -> None:
    chosen = [_scenario("kill"), _scenario("cut-secondary", "b"), _scenario("rst"),
              _scenario("cut-main", "c")]
    labs = by_lab(chosen, one_lab=False)
    assert {suffix: [s.name for s in group] for suffix, group in labs.items()} == {
        "": ["kill", "rst"], "b": ["cut-secondary"], "c": ["cut-main"]}
    assert [s.name for s in by_lab(chosen, one_lab=True)[""]] == [s.name for s in chosen]
    assert list(by_lab(chosen, one_lab=True)) == [""]


def test_a_scenario_of_a_lab_of_its_own_chosen_alone_runs_in_the_first_lab() -> None:
    labs = by_lab([_scenario("cut-main", "c")], one_lab=False)
    assert {suffix: [s.name for s in group] for suffix, group in labs.items()} == {
        "": ["cut-main"]}


def test_the_campaign_keeps_the_long_power_cuts_in_labs_beside_the_first() -> None:
    labs = {scenario.name: scenario.lab for scenario in all_scenarios()}
    assert labs["power-off-secondary"] and labs["power-off-main"]
    assert labs["power-off-secondary"] != labs["power-off-main"]
    # The other labs take short rows after their long wait; the first lab keeps most rows.
    counts = {lab: sum(1 for name in labs if labs[name] == lab) for lab in set(labs.values())}
    assert set(counts) == {"", "b", "c", "d", "e"}  # d: destroying hosts; e: Bluesky
    assert counts[""] > counts["b"] + counts["c"] + counts["d"] + counts["e"]


def test_bluesky_rows_have_a_lab_of_their_own_and_sources_never_share_one() -> None:
    scenarios = all_scenarios()
    sources = {scenario.lab: set() for scenario in scenarios}
    for scenario in scenarios:
        sources[scenario.lab].add(scenario.source)
    assert sources.pop("e") == {"bluesky"}
    assert all(found == {"x"} for found in sources.values())
    x, sky = _scenario("kill"), Scenario("sky", "sky", lambda lab: None, lab="e",
                                         source="bluesky")
    assert lab_source([x]) == "x" and lab_source([sky]) == "bluesky" and lab_source([]) == "x"
    with pytest.raises(ValueError, match="cannot share a lab"):
        lab_source([x, sky])


def test_the_bluesky_window_counts_every_post_the_network_created_in_it() -> None:
    """Event i of the fakes' universe is due at epoch + i / rate: a window of 100 s at 50
    events/s holds 5,000 events, about a tenth of them post creates."""
    posts = created_between(1_000_000.0, 50.0, 1_000_100.0, 1_000_200.0)
    assert 300 < len(posts) < 800
    assert all(uri.startswith("at://did:plc:") and "/app.bsky.feed.post/" in uri
               for uri in posts)
    halves = (created_between(1_000_000.0, 50.0, 1_000_100.0, 1_000_150.0)
              | created_between(1_000_000.0, 50.0, 1_000_150.0, 1_000_200.0))
    assert halves == posts
    assert created_between(1_000_000.0, 50.0, 999_000.0, 999_500.0) == set()
