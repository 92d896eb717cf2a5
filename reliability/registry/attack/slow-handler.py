"""A handler slower than its client: 0.1 s per message, no answer (reliability/attacks.py)."""

import time


def onMessage(message):
    time.sleep(0.1)
