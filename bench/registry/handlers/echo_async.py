"""The benchmarks' echo, as ``async def``: it runs on polysocket's event loop."""


async def onMessage(message: object) -> object:
    return message
