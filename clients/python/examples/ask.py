#!/usr/bin/env python3
"""Ask a question about a stream and print the answer as it is generated.

    ask.py gate "Is the gate open?" --window 30

The endpoint comes from $VIGIL_ENDPOINT (default ipc:///run/vigil/vigild.sock).
"""
import argparse
import sys

import vigil_client


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stream")
    ap.add_argument("question")
    ap.add_argument("--window", type=float, help="only the last N seconds of video")
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    try:
        with vigil_client.Client() as vc:
            # Leaving the with-block early (Ctrl-C) cancels the answer in the daemon.
            with vc.ask(args.stream, args.question, window=args.window,
                        max_tokens=args.max_tokens) as answer:
                for piece in answer:
                    print(piece, end="", flush=True)
            print()
            t = answer.timing
            print("(%s; first token after %.0f ms, %.1f tokens/s)"
                  % (answer.finish_reason, t["ttft_ms"], t["tokens_per_s"]), file=sys.stderr)
    except vigil_client.DaemonUnreachable as e:
        sys.exit("ask.py: %s" % e.message)
    except vigil_client.VigilError as e:
        sys.exit("ask.py: vigild: %s" % e)


if __name__ == "__main__":
    main()
