"""The Dirigible seed's handler, in Python: it logs every event of its connection.

Served as an endpoint it is an echo: what ``onMessage`` returns goes back to the sender.
"""

import logging

import polysocket

log = logging.getLogger("polysocket.sample")

#: A log line shows this much of a message: a client must not be able to fill the log.
SHOWN = 200


def onOpen():
    log.info("Connection opened")


def onMessage(message):
    shown = message[:SHOWN]
    more = f" ... ({len(message)} in all)" if len(message) > SHOWN else ""
    log.info("Message: %s%s", shown, more)
    return message


def onError(error):
    log.error("Error: " + error)


def onClose():
    log.info("Connection closed (%s)", polysocket.getCloseCode())
