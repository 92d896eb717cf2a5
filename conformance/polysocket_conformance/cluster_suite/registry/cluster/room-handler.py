"""The cluster suite's endpoint. A message is broadcast to every session of the endpoint,
cluster-wide, except two commands answered to the sender alone:

- ``/who``: JSON ``{"me": ID, "node": NODE, "sessions": [[ID, NODE], ...]}`` from
  ``getSessions`` (every node's sessions, each with its node);
- ``/to ID TEXT``: ``sendTo(ID, TEXT)``; answers ``sent`` or ``unknown``.
"""

import json

import polysocket


def onMessage(message: str) -> None:
    session = polysocket.getSession()
    if message == "/who":
        listing = [[s.id, s.node] for s in polysocket.getSessions(session.endpoint)]
        session.send(json.dumps({"me": session.id, "node": session.node, "sessions": listing}))
    elif message.startswith("/to "):
        _, target, text = message.split(" ", 2)
        session.send("sent" if polysocket.sendTo(target, text) else "unknown")
    else:
        polysocket.broadcast(session.endpoint, message)
