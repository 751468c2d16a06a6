"""The durable post queue on a real SQLite file, against a link the test drives: sends are
recorded, echoes and outages are the test's to give."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.errors import Codes, RealtimeError
from agent.events.errors import LinkDownError
from agent.events.postbox import PostBox

TIMEOUT = 10.0


class Link:
    """The hub link as the post box sees it: sends land here while it is up."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.refuse: set[str] = set()  # groups the hub refuses
        self.echo_to: PostBox | None = None  # echo every post back, as the hub does
        self.changed = asyncio.Condition()

    async def send(self, group: str, content: dict[str, Any]) -> None:
        if not self.up:
            raise LinkDownError("down")
        if group in self.refuse:
            raise RealtimeError(Codes.INVALID_REQUEST, f'Not joined to the group "{group}".')
        async with self.changed:
            self.sent.append((group, content))
            self.changed.notify_all()
        if self.echo_to is not None:  # the echo comes back after the send returned
            asyncio.get_running_loop().call_soon(self.echo_to.acknowledge, content["id"])

    async def wait_sent(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        async with asyncio.timeout(TIMEOUT), self.changed:
            await self.changed.wait_for(lambda: len(self.sent) >= count)
        return list(self.sent)

    def numbers(self) -> list[int]:
        return [content["n"] for _group, content in self.sent]


async def echo_all(box: PostBox, link: Link) -> None:
    for _group, content in link.sent:
        box.acknowledge(content["id"])


@pytest.fixture
async def link() -> Link:
    return Link()


@pytest.fixture
async def box(tmp_path: Path, link: Link) -> Any:
    box = PostBox(tmp_path / "outbox.db", send=link.send, max_posts=50, ack_seconds=5)
    await box.start()
    yield box
    await box.aclose()


async def test_posts_wait_for_the_link_and_go_in_order_with_their_ids(
    box: PostBox, link: Link
) -> None:
    ids = [await box.add("home", {"n": n}) for n in range(10)]
    assert box.depth == 10
    await asyncio.sleep(0)
    assert link.sent == []  # the link is down: nothing goes, nothing is lost
    link.up = True
    box.link_up()
    sent = await link.wait_sent(10)
    assert [content["id"] for _g, content in sent] == ids
    assert link.numbers() == list(range(10))
    await echo_all(box, link)
    async with asyncio.timeout(TIMEOUT):
        await box.wait_empty()
    assert box.stats().delivered == 10


async def test_unechoed_posts_go_again_in_order_after_the_link_comes_back(
    box: PostBox, link: Link
) -> None:
    link.up = True
    box.link_up()
    for n in range(6):
        await box.add("home", {"n": n})
    await link.wait_sent(6)
    for _group, content in link.sent[:2]:
        assert box.acknowledge(content["id"])
    link.up = False
    box.link_down()  # the hub died with posts 2-5 in its buffers
    for n in range(6, 8):
        await box.add("home", {"n": n})
    link.up = True
    box.link_up()
    await link.wait_sent(12)
    assert link.numbers() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]
    await echo_all(box, link)
    async with asyncio.timeout(TIMEOUT):
        await box.wait_empty()


async def test_posts_survive_a_restart_of_the_agent(tmp_path: Path, link: Link) -> None:
    first = PostBox(tmp_path / "outbox.db", send=link.send)
    await first.start()
    for n in range(3):
        await first.add("home", {"n": n})
    await first.aclose()
    second = PostBox(tmp_path / "outbox.db", send=link.send)
    await second.start()
    try:
        assert second.depth == 3
        link.up = True
        second.link_up()
        await link.wait_sent(3)
        assert link.numbers() == [0, 1, 2]
    finally:
        await second.aclose()


async def test_a_full_queue_drops_the_oldest_counts_and_logs_once(
    box: PostBox, link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.events.postbox"):
        for n in range(80):
            await box.add("home", {"n": n})
        assert box.depth == 50
        assert box.stats().dropped == 30
        full = [r for r in caplog.records if "post queue full" in r.getMessage()]
        assert len(full) == 1
        link.up = True
        link.echo_to = box
        box.link_up()
        await link.wait_sent(50)
        assert link.numbers() == list(range(30, 80))  # the newest 50, in order
        async with asyncio.timeout(TIMEOUT):
            await box.wait_empty()
    drained = [r for r in caplog.records if "30 event post(s) were dropped" in r.getMessage()]
    assert len(drained) == 1
    assert "edge_agent_posts_dropped_total 30" in box.stats().render_metrics()


async def test_a_post_never_echoed_is_dropped_after_three_tries(
    tmp_path: Path, link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    box = PostBox(tmp_path / "outbox.db", send=link.send, ack_seconds=0.2)
    await box.start()
    link.up = True
    box.link_up()
    try:
        lost = await box.add("home", {"n": 0})
        with caplog.at_level(logging.WARNING, logger="agent.events.postbox"):
            await link.wait_sent(3)  # sent, then again after each silent ack window
            async with asyncio.timeout(TIMEOUT):
                await box.wait_empty()
    finally:
        await box.aclose()
    assert [c["id"] for _g, c in link.sent] == [lost] * 3
    assert box.stats().rejected == 1
    assert any("did not echo" in r.getMessage() for r in caplog.records)


async def test_a_refused_post_is_dropped_and_does_not_hold_up_the_rest(
    box: PostBox, link: Link
) -> None:
    link.up = True
    link.refuse.add("secret")
    box.link_up()
    await box.add("secret", {"n": 0})
    await box.add("home", {"n": 1})
    sent = await link.wait_sent(1)
    assert sent[0][0] == "home"
    await echo_all(box, link)
    async with asyncio.timeout(TIMEOUT):
        await box.wait_empty()
    assert (box.stats().rejected, box.stats().delivered) == (1, 1)


async def test_a_held_post_waits_for_its_release_and_keeps_the_order(
    box: PostBox, link: Link
) -> None:
    link.up = True
    box.link_up()
    held = await box.post("home", {"n": 0, "snapshot": None}, hold_seconds=30)
    assert held is not None
    await box.add("home", {"n": 1})
    await asyncio.sleep(0.05)
    assert link.sent == []  # the held one is first: both wait
    await held.release({"snapshot": "/api/snapshots/abc"})
    sent = await link.wait_sent(2)
    assert [c["n"] for _g, c in sent] == [0, 1]
    assert sent[0][1]["snapshot"] == "/api/snapshots/abc"


async def test_a_hold_ends_by_itself(box: PostBox, link: Link) -> None:
    link.up = True
    box.link_up()
    assert await box.post("home", {"n": 0}, hold_seconds=0.1) is not None
    [(_group, content)] = await link.wait_sent(1)
    assert content["n"] == 0


async def test_a_burst_is_paced_below_the_hubs_frame_limit(tmp_path: Path, link: Link) -> None:
    box = PostBox(tmp_path / "outbox.db", send=link.send, rate=50.0, burst=5)
    await box.start()
    try:
        for n in range(10):
            await box.add("home", {"n": n})
        link.up = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        box.link_up()
        await link.wait_sent(10)
        # 5 at once, then 5 more at 50 a second: at least 4 intervals of 20 ms.
        assert loop.time() - started >= 0.08
        assert link.numbers() == list(range(10))
    finally:
        await box.aclose()
