"""The cluster suite (see the package docstring): three server processes, clients on each."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from .support import PRESENCE_EXPIRY, Broker, Client, Node, wait_for, wait_presence

Launch = Callable[[Broker, int], list[Node]]


async def open_clients(nodes: list[Node], per_node: int) -> list[Client]:
    return [await Client.open(node) for node in nodes for _ in range(per_node)]


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(client.close() for client in clients))


def test_broadcast_reaches_every_session_once_in_order(broker: Broker, launch: Launch) -> None:
    nodes = launch(broker, 3)

    async def main() -> None:
        clients = await open_clients(nodes, 2)
        try:
            await wait_presence(clients, {c.id for c in clients}, 10 * PRESENCE_EXPIRY)
            first, second = clients[0], clients[2]  # on two different nodes
            ours = [f"a:{i}" for i in range(100)]
            theirs = [f"b:{i}" for i in range(100)]

            async def send_all(client: Client, messages: list[str]) -> None:
                for message in messages:
                    await client.send(message)

            started = time.monotonic()
            await asyncio.gather(send_all(first, ours), send_all(second, theirs))
            for client in clients:
                await client.wait_messages(200, timeout=20)
            took = time.monotonic() - started
            await asyncio.sleep(0.5)  # a duplicate would be here by now
            for client in clients:
                got = client.messages
                assert len(got) == 200, f"{client.node_name}: {len(got)} messages, not 200"
                assert [m for m in got if m.startswith("a:")] == ours, client.node_name
                assert [m for m in got if m.startswith("b:")] == theirs, client.node_name
            print(f"200 messages from 2 nodes to 6 sessions on 3 nodes in {took:.3f} s")
        finally:
            await close_all(clients)

    asyncio.run(main())
    assert all(node.alive() for node in nodes)


def test_get_sessions_lists_every_session_with_its_node(broker: Broker, launch: Launch) -> None:
    nodes = launch(broker, 3)

    async def main() -> None:
        clients = await open_clients(nodes, 2)
        try:
            expected = {c.id: c.node_name for c in clients}
            assert len(set(expected.values())) == 3, expected
            await wait_presence(clients, set(expected), 10 * PRESENCE_EXPIRY)
            for client in clients:
                assert await client.sessions() == expected, client.node_name
            # a closed session leaves every node's view
            gone = clients.pop()
            await gone.close()
            await wait_presence(clients, set(expected) - {gone.id}, 10 * PRESENCE_EXPIRY)
        finally:
            await close_all(clients)

    asyncio.run(main())


def test_send_to_reaches_a_session_on_another_node(broker: Broker, launch: Launch) -> None:
    nodes = launch(broker, 3)

    async def main() -> None:
        clients = await open_clients(nodes, 1)
        try:
            await wait_presence(clients, {c.id for c in clients}, 10 * PRESENCE_EXPIRY)
            target, sender, bystander = clients
            assert await sender.ask(f"/to {target.id} only for you") == "sent"
            await target.wait_messages(1, timeout=10)
            assert target.messages == ["only for you"]
            assert await sender.ask("/to 0123456789abcdef no such session") == "unknown"
            await asyncio.sleep(0.3)
            assert bystander.messages == [] and sender.messages == []
        finally:
            await close_all(clients)

    asyncio.run(main())


def test_a_killed_node_leaves_presence_within_the_expiry(broker: Broker, launch: Launch) -> None:
    nodes = launch(broker, 3)

    async def main() -> None:
        clients = await open_clients(nodes, 2)
        try:
            await wait_presence(clients, {c.id for c in clients}, 10 * PRESENCE_EXPIRY)
            survivors = [c for c in clients if c.node is not nodes[2]]
            nodes[2].kill()
            # heard last up to one heartbeat (expiry / 4) before the kill, swept every
            # heartbeat: gone within expiry + 2 heartbeats
            bound = PRESENCE_EXPIRY * 1.5 + 1.0
            took = await wait_for(
                lambda: _lists_only(survivors, {c.id for c in survivors}),
                bound,
                "the killed node's sessions leave getSessions",
            )
            print(f"a SIGKILLed node left the presence view in {took:.2f} s")
        finally:
            await close_all(clients)

    asyncio.run(main())


async def _lists_only(clients: list[Client], expected: set[str]) -> bool:
    for client in clients:
        if set(await client.sessions()) != expected:
            return False
    return True


def test_broker_killed_and_restarted_mid_traffic(private_broker: Broker, launch: Launch) -> None:
    nodes = launch(private_broker, 3)

    async def main() -> None:
        clients = await open_clients(nodes, 2)
        try:
            await wait_presence(clients, {c.id for c in clients}, 10 * PRESENCE_EXPIRY)
            sender, local_peer = clients[0], clients[1]  # both on nodes[0]
            remote = clients[2:]
            sent: list[str] = []
            restarted_at: list[int] = []
            stop = asyncio.Event()

            async def traffic() -> None:
                while not stop.is_set():
                    message = f"t:{len(sent)}"
                    sent.append(message)
                    await sender.send(message)
                    await asyncio.sleep(0.02)

            sending = asyncio.get_running_loop().create_task(traffic())
            await asyncio.sleep(0.5)
            private_broker.kill()
            await asyncio.sleep(1.5)
            private_broker.start()
            restarted_at.append(len(sent))

            async def resumed() -> bool:
                return all(any(int(m[2:]) > restarted_at[0] for m in c.messages) for c in remote)

            took = await wait_for(resumed, 30, "remote delivery resumes after the restart")
            print(f"remote delivery resumed {took:.2f} s after the broker restarted")
            stop.set()
            await sending
            for client in (sender, local_peer):
                await client.wait_messages(len(sent), timeout=10)
                assert client.messages == sent, "local delivery was interrupted"
            for client in remote:
                got = [int(m[2:]) for m in client.messages]
                assert got == sorted(set(got)), "remote delivery: a duplicate or out of order"
            # presence rebuilt on every node
            await wait_presence(clients, {c.id for c in clients}, 10 * PRESENCE_EXPIRY)
        finally:
            await close_all(clients)

    asyncio.run(main())
    assert all(node.alive() for node in nodes), "a node died with the broker"
    for index, node in enumerate(nodes):
        log = node.log()
        lost = re.findall(r"the backplane .* is unreachable", log)
        back = re.findall(r"the backplane .* is back after .*; (\d+) message", log)
        assert len(lost) == 1, f"node {index}: {len(lost)} outage lines, not 1:\n{log}"
        assert len(back) == 1, f"node {index}: {len(back)} recovery lines, not 1:\n{log}"
    skipped_by_sender = int(re.findall(r"is back after .*; (\d+) message", nodes[0].log())[0])
    assert skipped_by_sender > 0, "the sending node counted nothing skipped during the outage"
