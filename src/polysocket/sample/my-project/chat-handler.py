"""A chat room: every message is broadcast to every session of the endpoint."""

import polysocket


def onOpen():
    session = polysocket.getSession()
    polysocket.broadcast(session.endpoint, f"* {session.id[:8]} joined")


def onMessage(message):
    session = polysocket.getSession()
    polysocket.broadcast(session.endpoint, f"{session.id[:8]}: {message}")


def onClose():
    session = polysocket.getSession()
    polysocket.broadcast(session.endpoint, f"* {session.id[:8]} left")
