"""A handler stuck for a minute on each message, like one waiting on a dead database."""

import time


def onMessage(message):
    time.sleep(60)
