"""The Dirigible seed's handler, in Python: it logs every event of its connection.

Served as an endpoint it is an echo: what ``onMessage`` returns goes back to the sender.
"""

import logging

import polysocket

log = logging.getLogger("polysocket.sample")


def onOpen():
    log.info("Connection opened")


def onMessage(message):
    log.info("Message: %s", message)
    return message


def onError(error):
    log.error("Error: " + error)


def onClose():
    log.info("Connection closed (%s)", polysocket.getCloseCode())
