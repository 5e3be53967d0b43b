"""vigil_client against the real vigild (see daemon.py): streams, questions (streamed, whole,
cancelled, interleaved on one client), images, watches and events, error codes, CURVE."""

import os
import time
import unittest

import zmq

from daemon import Daemon
import vigil_client

QUESTION = "What color is the shape?"


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        try:
            cls.daemon.wait_ready()
        except Exception:
            cls.daemon.stop()
            raise
        cls.vc = cls.daemon.client()
        cls.vc.stream_add("clip", cls.daemon.clip, tokens_per_pair=16, loop=True)
        cls.daemon.wait_pairs(cls.vc, "clip", 2)

    @classmethod
    def tearDownClass(cls):
        cls.vc.close()
        rc = cls.daemon.stop()
        if rc != 0:
            raise AssertionError("vigild exited with %r after SIGTERM:\n%s"
                                 % (rc, cls.daemon.log_tail()))

    def test_ping_and_status(self):
        pong = self.vc.ping()
        self.assertTrue(pong["ok"])
        self.assertEqual(pong["version"], "0.1.0")
        self.assertGreater(pong["rtt_ms"], 0)
        st = self.vc.status()
        names = [s["stream"] for s in st["streams"]]
        self.assertIn("clip", names)
        one = self.vc.status("clip")["stream"]
        self.assertEqual(one["stream"], "clip")
        self.assertEqual(one["tokens_per_pair"], 16)
        self.assertIn(one["state"], ("running", "starting"))
        listed = self.vc.streams()
        self.assertEqual([s["stream"] for s in listed], names)

    def test_ask_streams_tokens(self):
        answer = self.vc.ask("clip", QUESTION, max_tokens=5)
        pieces = list(answer)
        self.assertGreater(len(pieces), 0)
        self.assertTrue(all(isinstance(p, str) and p for p in pieces))
        self.assertEqual("".join(pieces), answer.text)
        self.assertEqual(answer.finish_reason, "length")
        self.assertEqual(answer.usage["completion_tokens"], 5)
        self.assertGreater(answer.usage["prompt_tokens"], 16)
        for k in ("queue_ms", "ttft_ms", "total_ms", "tokens_per_s"):
            self.assertIn(k, answer.timing)
        self.assertEqual(answer.done["id"], answer.id)

    def test_window_forms(self):
        for kw in (dict(window=2), dict(from_media=0), dict(from_wall=time.time() - 3600),
                   dict(from_wall="2020-01-01T00:00:00Z", to_wall=time.time() + 60)):
            with self.subTest(**{k: str(v) for k, v in kw.items()}):
                a = self.vc.ask("clip", QUESTION, max_tokens=2, **kw)
                a.wait()
                self.assertEqual(a.usage["completion_tokens"], 2)

    def test_cancel(self):
        answer = self.vc.ask("clip", "Describe everything in great detail.", max_tokens=4096,
                             temperature=1.0, seed=7)
        first = next(answer)
        self.assertTrue(first)
        self.assertTrue(answer.cancel())
        self.assertEqual(answer.finish_reason, "cancelled")
        self.assertLess(answer.usage["completion_tokens"], 4096)
        # The daemon is free again: a new question is answered.
        self.assertTrue(self.vc.ask_text("clip", QUESTION, max_tokens=1) is not None)

    def test_context_manager_cancels(self):
        with self.vc.ask("clip", "Tell a long story.", max_tokens=4096, temperature=1.0,
                         seed=3) as answer:
            next(answer)
        self.assertEqual(answer.finish_reason, "cancelled")

    def test_interleaved_answers_on_one_client(self):
        a1 = self.vc.ask("clip", QUESTION, max_tokens=3)
        a2 = self.vc.ask("clip", "How many shapes are there?", max_tokens=4)
        # Consume the second first: frames of the first wait in its queue meanwhile.
        t2 = a2.wait()
        t1 = a1.wait()
        self.assertEqual(a1.usage["completion_tokens"], 3)
        self.assertEqual(a2.usage["completion_tokens"], 4)
        self.assertEqual(a1.done["id"], a1.id)
        self.assertEqual(a2.done["id"], a2.id)
        self.assertEqual(t1, a1.text)
        self.assertEqual(t2, a2.text)

    def test_errors(self):
        with self.assertRaises(vigil_client.NotFound) as cm:
            self.vc.ask("nosuch", QUESTION).wait()
        self.assertEqual(cm.exception.code, "not_found")
        with self.assertRaises(vigil_client.RequestError) as cm:
            self.vc.ask("clip", QUESTION, temperature=9).wait()
        self.assertEqual(cm.exception.code, "bad_request")
        self.assertEqual(cm.exception.field, "sampling.temperature")
        with self.assertRaises(vigil_client.AlreadyExists):
            self.vc.stream_add("clip", self.daemon.clip)
        with self.assertRaises(vigil_client.Forbidden) as cm:
            self.vc.stream_add("web", "https://example.com/live.m3u8")
        self.assertIn("https", cm.exception.message)
        with self.assertRaises(vigil_client.LimitError):
            self.vc.ask("clip", QUESTION, max_tokens=10 ** 7).wait()
        with self.assertRaises(vigil_client.NotFound):
            self.vc.stream_remove("nosuch")
        with self.assertRaises(vigil_client.NotFound):
            self.vc.cancel("no-such-query")

    def test_image(self):
        a = self.vc.image(self.daemon.image, "What is in this picture?", max_tokens=4)
        text = a.wait()
        self.assertEqual(a.usage["completion_tokens"], 4)
        self.assertEqual(text, a.text)
        with open(self.daemon.image, "rb") as f:
            data = f.read()
        self.assertEqual(self.vc.image_text(data, "What is in this picture?", max_tokens=4), text)
        with self.assertRaises(vigil_client.MediaError):
            self.vc.image_text(b"this is not an image", "What is it?")

    def test_watch_and_events(self):
        with self.vc.events(watch="shape", kinds="watch", timeout=120) as events:
            name = self.vc.watch_add("clip", "Is there a shape?", every=1, name="shape",
                                     expect="yes_no", max_tokens=2)
            self.assertEqual(name, "shape")
            listed = [w for w in self.vc.watches() if w["watch"] == "shape"]
            self.assertEqual(len(listed), 1)
            self.assertEqual(listed[0]["stream"], "clip")
            self.assertEqual(listed[0]["expect"]["type"], "yes_no")
            self.assertEqual(self.vc.watches(stream="nosuch-stream"), [])
            ev = next(events)
        self.assertEqual(ev.name, "watch.answer")
        self.assertEqual(ev.topic, "watch.shape")
        self.assertEqual(ev["watch"], "shape")
        self.assertEqual(ev["stream"], "clip")
        self.assertIn(ev["value"], ("yes", "no", None))
        self.vc.watch_remove("shape")
        with self.assertRaises(vigil_client.NotFound):
            self.vc.watch_remove("shape")

    def test_stream_state_events_and_remove(self):
        with self.vc.events(stream="second", kinds=["state"], timeout=60) as events:
            st = self.vc.stream_add("second", self.daemon.clip, tokens_per_pair=16)
            self.assertEqual(st["stream"], "second")
            states = []
            for ev in events:
                states.append(ev["state"])
                self.assertEqual(ev["stream"], "second")
                if ev["state"] in ("running", "ended", "failed"):
                    break
            self.assertIn("running", states)
            self.vc.stream_remove("second")
            for ev in events:
                if ev["state"] == "removed":
                    break
            else:
                self.fail("no 'removed' state event")
        self.assertNotIn("second", [s["stream"] for s in self.vc.streams()])


class EndedStreamTest(unittest.TestCase):
    """A file stream that has ended: its context no longer changes, so greedy answers are
    reproducible, streamed or not. (A live stream's context, and the positions a question
    gets, move on between two questions.)"""

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        try:
            cls.daemon.wait_ready()
        except Exception:
            cls.daemon.stop()
            raise
        cls.vc = cls.daemon.client()

    @classmethod
    def tearDownClass(cls):
        cls.vc.close()
        cls.daemon.stop()

    def test_ask_text_matches_stream_for_greedy(self):
        self.vc.stream_add("still", self.daemon.clip, tokens_per_pair=16)
        # "ended" is the source's state: pairs read before the end may still be encoding.
        # 8 s at 2 fps: 16 frames, 8 pairs.
        deadline = time.monotonic() + 120
        while True:
            st = self.vc.status("still")["stream"]
            if st["state"] == "ended" and st["pairs_encoded"] == 8:
                break
            self.assertLess(time.monotonic(), deadline,
                            "stream 'still' did not end with 8 pairs: %r" % st)
            time.sleep(0.1)
        streamed = "".join(self.vc.ask("still", QUESTION, max_tokens=6))
        whole = self.vc.ask_text("still", QUESTION, max_tokens=6)
        self.assertTrue(whole)
        self.assertEqual(streamed, whole)
        again = self.vc.ask_text("still", QUESTION, max_tokens=6)
        self.assertEqual(again, whole)


class CurveTest(unittest.TestCase):
    """A daemon that requires CURVE: the right keys connect, a foreign client key does not."""

    @classmethod
    def setUpClass(cls):
        cls.server_pub, server_sec = zmq.curve_keypair()
        cls.client_pub, cls.client_sec = zmq.curve_keypair()
        cls.daemon = Daemon(extra={"curve": {"secret_key": server_sec.decode(),
                                             "client_keys": [cls.client_pub.decode()]}})
        try:
            cls.daemon.wait_ready(server_key=cls.server_pub,
                                  client_keys=(cls.client_pub, cls.client_sec))
        except Exception:
            cls.daemon.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def test_allowed_client(self):
        key_file = os.path.join(self.daemon.dir, "client.key")
        with open(key_file, "w") as f:
            f.write(self.client_sec.decode() + "\n")
        with self.daemon.client(server_key=self.server_pub, client_keys=key_file) as c:
            self.assertTrue(c.ping()["ok"])

    def test_refused_client(self):
        other_pub, other_sec = zmq.curve_keypair()
        with self.daemon.client(server_key=self.server_pub, client_keys=(other_pub, other_sec),
                                timeout=1) as c:
            with self.assertRaises(vigil_client.DaemonUnreachable):
                c.ping()
        with self.daemon.client(timeout=1) as plain:
            with self.assertRaises(vigil_client.DaemonUnreachable):
                plain.ping()


if __name__ == "__main__":
    unittest.main()
