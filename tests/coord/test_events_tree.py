"""The descendant tree is a function of the SET of events: any arrival order, any repetition, same tree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

import coord
from coord.events import Descendant, ReceivedEvent, ScopeSubDelegated, TurnEnded
from coord.events.tree import event_changes

AGENTS = ["a", "b", "c", "d"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _fold(owner: str, events: list[ReceivedEvent]) -> dict[str, Descendant]:
    """Apply every event's merges in the order given, as a listener would, from an empty registry."""
    tree: dict[str, Descendant] = {}
    for received in events:
        for agent, changes in event_changes(owner, received).items():
            record = tree.get(agent) or Descendant(agent=agent)
            for change in changes:
                record = change(record)
            tree[agent] = record
    return tree


@st.composite
def _event_sets(draw: st.DrawFn) -> list[ReceivedEvent]:
    """Direct reports and competing delegations among a few agents, some at the very same time."""
    count = draw(st.integers(min_value=1, max_value=12))
    events: list[ReceivedEvent] = []
    for i in range(count):
        at = T0 + timedelta(seconds=draw(st.integers(min_value=0, max_value=5)))
        agent = draw(st.sampled_from(AGENTS))
        if draw(st.booleans()):
            sub = draw(st.sampled_from([x for x in AGENTS if x != agent]))
            scope = draw(st.lists(st.sampled_from(["src", "docs", "tests"]), max_size=2))
            event: ScopeSubDelegated | TurnEnded = ScopeSubDelegated(
                id=f"ev-{i}", agent=agent, sub_agent=sub, scope=scope, at=at
            )
        else:
            event = TurnEnded(id=f"ev-{i}", agent=agent, turn=i, at=at)
        events.append(ReceivedEvent(event, to="root", sender=agent))
    return events


@settings(max_examples=300, deadline=None)
@given(data=st.data(), events=_event_sets())
def test_any_permutation_of_a_set_of_events_gives_the_same_tree(
    data: st.DataObject, events: list[ReceivedEvent]
) -> None:
    expected = _fold("root", events)
    shuffled = data.draw(st.permutations(events))
    repeated = data.draw(st.lists(st.sampled_from(events), max_size=4))
    assert _fold("root", [*shuffled, *repeated]) == expected


def test_the_earliest_claim_names_the_parent_and_a_later_delegation_never_re_parents() -> None:
    at = [T0 + timedelta(seconds=i) for i in range(4)]
    v_reports = ReceivedEvent(TurnEnded(id="ev-1", agent="v", at=at[1]), to="root", sender="v")
    x_adopts = ReceivedEvent(ScopeSubDelegated(id="ev-2", agent="x", sub_agent="v", at=at[2]), to="root", sender="x")
    y_spawns = ReceivedEvent(ScopeSubDelegated(id="ev-0", agent="y", sub_agent="w", at=at[0]), to="root", sender="y")
    z_late = ReceivedEvent(ScopeSubDelegated(id="ev-3", agent="z", sub_agent="w", at=at[3]), to="root", sender="z")
    for order in ([v_reports, x_adopts, y_spawns, z_late], [z_late, x_adopts, y_spawns, v_reports]):
        tree = _fold("root", order)
        assert tree["v"].parent("root") == "root" and tree["v"].delegated_by is None
        assert tree["w"].parent("root") == "y" and tree["w"].delegated_by == "y"


async def test_a_listener_names_the_earliest_delegator_whichever_delegation_arrives_first(
    coord_conn: coord.Coord,
) -> None:
    events = coord_conn.events
    early = T0
    late = T0 + timedelta(seconds=5)
    for root, first_sent in (("root1", "p1"), ("root2", "p2")):
        for parent in ("p1", "p2"):
            assert await events.emit(root, TurnEnded(agent=parent, at=early - timedelta(seconds=1)))
        claims = {
            "p1": ScopeSubDelegated(agent="p1", sub_agent="kid", scope=["one"], at=late),
            "p2": ScopeSubDelegated(agent="p2", sub_agent="kid", scope=["two"], at=early),
        }
        second_sent = "p2" if first_sent == "p1" else "p1"
        assert await events.emit(root, claims[first_sent])
        assert await events.emit(root, claims[second_sent])
        async with events.listener(root) as listener:
            await listener.catch_up()
        tree = await events.descendants(root)
        assert tree["kid"].delegated_by == "p2", (root, tree["kid"])  # p2's delegation is the earlier one
        assert tree["kid"].scope == ["one", "two"]
