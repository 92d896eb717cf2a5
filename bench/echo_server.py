"""The demo's plain aiohttp echo peer, in a process of its own for the benchmarks.

Prints its port, then serves ``/echo`` until killed.
"""

import asyncio
import contextlib

from polysocket.demo import start_echo_peer


async def main() -> None:
    _, port = await start_echo_peer()
    print(port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
