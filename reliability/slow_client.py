"""A ``polysocket.createWebsocket`` client whose onMessage sleeps 0.1 s (attack 8).

    python reliability/slow_client.py URI --engine E --seconds N

Connects, stays connected for N seconds while its handler works through what arrives, then
closes. attacks.py watches this process's RSS.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import polysocket


class SlowHandler:
    def onMessage(self, message: object) -> None:
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--engine", default="aiohttp")
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    client = polysocket.createWebsocket(args.uri, SlowHandler(), args.engine)
    print("connected", flush=True)
    time.sleep(args.seconds)
    # close() waits for the handshake and onClose; do not let a wedged close hang the run
    threading.Thread(target=client.close, daemon=True).start()
    time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
