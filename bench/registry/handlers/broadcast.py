"""The broadcast scenario: "go:TOKEN" from any client sends "B:TOKEN" to every session.

``async def`` so that it runs on the event loop, as raw websockets' handler does (the
broadcast itself never waits, whatever the handler kind)."""

import polysocket


async def onMessage(message: object) -> None:
    if isinstance(message, str) and message.startswith("go:"):
        polysocket.broadcast("broadcast", "B:" + message[3:])
