#!/usr/bin/env python3
"""Add a camera (or file) stream and wait until its first frames are in the context.

    add_stream.py gate rtsp://10.0.0.5/live --fps 1 --tokens-per-pair 144
"""
import argparse
import sys
import time

import vigil_client


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stream")
    ap.add_argument("url")
    ap.add_argument("--fps", type=float)
    ap.add_argument("--tokens-per-pair", type=int)
    ap.add_argument("--cache-tokens", type=int)
    args = ap.parse_args()
    with vigil_client.Client() as vc:
        try:
            vc.stream_add(args.stream, args.url, fps=args.fps,
                          tokens_per_pair=args.tokens_per_pair, cache_tokens=args.cache_tokens)
        except vigil_client.AlreadyExists:
            print("stream %s exists already" % args.stream)
        except vigil_client.Forbidden as e:
            sys.exit("add_stream.py: the daemon does not allow this source: %s" % e.message)
        # A stream opens in the background: follow its state until frames arrive.
        while True:
            st = vc.status(args.stream)["stream"]
            print("%s: %s, %s pairs encoded" % (args.stream, st["state"], st.get("pairs_encoded")))
            if st["state"] == "failed":
                sys.exit("add_stream.py: %s" % st.get("detail"))
            if (st.get("pairs_encoded") or 0) > 0:
                break
            time.sleep(1)


if __name__ == "__main__":
    main()
