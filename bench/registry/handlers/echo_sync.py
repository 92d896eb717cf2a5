"""The benchmarks' echo, as a plain function: it runs on the connection's handler thread."""


def onMessage(message: object) -> object:
    return message
