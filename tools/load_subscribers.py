"""Load: N subscriber processes on one daemon publishing as fast as the machine goes.

The daemon replays its synth source flat out (lossless) in small blocks for a
bounded amount of audio; each subscriber, a separate process, counts the audio
messages it receives and the gaps in their ``seq``. The report says what each
one got of what was published, and how fast the daemon went with them attached.

    python tools/load_subscribers.py --subscribers 8 --block 64 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

# A subscriber: pyzmq and json only, counting messages and seq gaps until a quiet second.
# It waits up to a minute for the first message: the daemon starts only after every
# subscriber is ready, and on a loaded machine its start-up takes seconds.
SUBSCRIBER = r"""
import json, sys, zmq
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.RCVHWM, 100000)
sock.setsockopt_string(zmq.SUBSCRIBE, "audio/")
sock.connect(sys.argv[1])
print("ready", flush=True)
got = gaps = lost = 0
first = last = None
started = False
while sock.poll(60000 if not started else 1000):
    started = True
    _, header, _ = sock.recv_multipart()
    seq = json.loads(header)["seq"]
    if last is not None and seq != last + 1:
        gaps += 1
        lost += seq - last - 1
    first = seq if first is None else first
    last, got = seq, got + 1
print(json.dumps({"received": got, "gaps": gaps, "lost_in_gaps": lost, "first_seq": first,
                  "last_seq": last}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=8)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of audio to publish")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5597")
    args = parser.parse_args()

    subs = [
        subprocess.Popen([sys.executable, "-c", SUBSCRIBER, args.endpoint],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(args.subscribers)
    ]  # fmt: skip
    for sub in subs:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
    env = {
        **os.environ,
        "STREAMER__PUBLISH__ENDPOINT": args.endpoint,
        "STREAMER__SOURCE__REALTIME": "false",
        "STREAMER__SOURCE__DURATION_S": str(args.seconds),
        "STREAMER__PIPELINE__BLOCK": str(args.block),
    }
    time.sleep(0.5)  # let the subscribers' connections settle before the first message
    start = time.monotonic()
    daemon = subprocess.run(
        [sys.executable, "-m", "streamer", "run"], env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    wall = time.monotonic() - start
    published = round(args.seconds * 48000 / args.block)
    results: list[dict[str, Any]] = []
    for sub in subs:
        out, _ = sub.communicate(timeout=60)
        results.append(json.loads(out.strip().splitlines()[-1]))
    sink_drops = re.search(r"sink drops: (\S+(?: \S+)?)", daemon.stderr)
    report = {
        "subscribers": args.subscribers,
        "block": args.block,
        "audio_s": args.seconds,
        "published_blocks": published,
        "daemon_exit": daemon.returncode,
        "daemon_wall_s": round(wall, 2),
        "blocks_per_s": round(published / wall),
        "publisher_queue_drops": sink_drops.group(1) if sink_drops else None,
        # What each got of what was published after it had joined (PUB/SUB joins late).
        "delivered_after_join": [
            round(r["received"] / (published - r["first_seq"]), 4) if r["received"] else 0.0
            for r in results
        ],
        "per_subscriber": results,
    }
    print(json.dumps(report, indent=2))
    return 0 if daemon.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
