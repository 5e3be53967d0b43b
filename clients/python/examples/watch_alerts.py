#!/usr/bin/env python3
"""Set up a yes/no watch and print its alerts until Ctrl-C.

    watch_alerts.py gate "Is a person at the gate?" --every 10 --cooldown 300
"""
import argparse

import vigil_client


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stream")
    ap.add_argument("prompt")
    ap.add_argument("--every", type=float, default=10)
    ap.add_argument("--cooldown", type=float, default=0)
    args = ap.parse_args()
    with vigil_client.Client() as vc:
        # Subscribe first: events published before the subscription are not replayed.
        with vc.events(stream=args.stream, kinds=["watch", "alert"]) as events:
            watch = vc.watch_add(args.stream, args.prompt, every=args.every, expect="yes_no",
                                 cooldown=args.cooldown, max_tokens=8)
            print("watch %s added; Ctrl-C to stop" % watch)
            try:
                for ev in events:
                    if ev.get("watch") != watch:
                        continue
                    if ev.name == "alert":
                        print("ALERT at %.1f s: %s" % (ev["media_time"], ev["text"]))
                    else:
                        print("answer: %s" % ev["value"])
            except KeyboardInterrupt:
                pass
            finally:
                vc.watch_remove(watch)


if __name__ == "__main__":
    main()
