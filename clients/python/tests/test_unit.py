"""vigil_client without a daemon: keys, endpoints, errors, argument checks, unreachable
daemons, and that the examples compile."""

import glob
import os
import socket
import tempfile
import time
import unittest

import zmq

from daemon import HERE  # noqa: F401  (puts vigil_client on sys.path)
import vigil_client
from vigil_client import client as client_mod


class KeysTest(unittest.TestCase):
    def setUp(self):
        self.pub, self.sec = zmq.curve_keypair()
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, name, text):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_key_forms(self):
        self.assertEqual(client_mod._read_key(self.pub.decode(), secret=False), self.pub)
        self.assertEqual(client_mod._read_key(self.pub, secret=False), self.pub)
        bare = self.write("server.key", "# vigild\n%s\n" % self.pub.decode())
        self.assertEqual(client_mod._read_key(bare, secret=False), self.pub)
        cert = self.write("client.key_secret",
                          "curve\n    public-key = \"%s\"\n    secret-key = \"%s\"\n"
                          % (self.pub.decode(), self.sec.decode()))
        self.assertEqual(client_mod._read_key(cert, secret=True), self.sec)
        self.assertEqual(client_mod._read_key(cert, secret=False), self.pub)

    def test_bad_keys(self):
        junk = self.write("junk", "not a key\n")
        with self.assertRaisesRegex(ValueError, "has no CURVE secret key"):
            client_mod._read_key(junk, secret=True)
        with self.assertRaisesRegex(ValueError, "nor a readable key file"):
            client_mod._read_key("/nonexistent/key", secret=False)

    def test_key_combinations(self):
        with self.assertRaisesRegex(ValueError, "without server_key"):
            vigil_client.Client(endpoint="ipc:///nonexistent", client_keys=self.sec)
        with self.assertRaisesRegex(ValueError, "without client_keys"):
            vigil_client.Client(endpoint="ipc:///nonexistent", server_key=self.pub)
        c = vigil_client.Client(endpoint="ipc:///nonexistent", server_key=self.pub,
                                client_keys=self.sec)
        self.assertEqual(c._curve, (self.pub, zmq.curve_public(self.sec), self.sec))
        c.close()


class EndpointTest(unittest.TestCase):
    def test_derived_events_endpoint(self):
        d = vigil_client.derive_events_endpoint
        self.assertEqual(d(vigil_client.DEFAULT_ENDPOINT), vigil_client.DEFAULT_EVENTS_ENDPOINT)
        self.assertEqual(d("ipc:///tmp/x/vigild.sock"), "ipc:///tmp/x/events.sock")
        self.assertIsNone(d("tcp://10.0.0.1:5555"))
        c = vigil_client.Client(endpoint="tcp://10.0.0.1:5555")
        with self.assertRaisesRegex(ValueError, "events_endpoint"):
            c.events()
        c.close()

    def test_environment(self):
        old = dict(os.environ)
        try:
            os.environ["VIGIL_ENDPOINT"] = "ipc:///tmp/envtest/vigild.sock"
            os.environ.pop("VIGIL_EVENTS_ENDPOINT", None)
            c = vigil_client.Client()
            self.assertEqual(c.endpoint, "ipc:///tmp/envtest/vigild.sock")
            self.assertEqual(c.events_endpoint, "ipc:///tmp/envtest/events.sock")
            c.close()
            c = vigil_client.Client(endpoint="tcp://127.0.0.1:1")
            self.assertEqual(c.endpoint, "tcp://127.0.0.1:1")
            c.close()
        finally:
            os.environ.clear()
            os.environ.update(old)


class ErrorsTest(unittest.TestCase):
    def test_mapping(self):
        cases = {
            "bad_json": vigil_client.RequestError, "bad_request": vigil_client.RequestError,
            "unknown_op": vigil_client.RequestError, "bad_url": vigil_client.BadURL,
            "too_large": vigil_client.LimitError, "queue_full": vigil_client.QueueFull,
            "not_found": vigil_client.NotFound, "already_exists": vigil_client.AlreadyExists,
            "forbidden": vigil_client.Forbidden, "cancelled": vigil_client.Cancelled,
            "shutting_down": vigil_client.ShuttingDown, "media_error": vigil_client.MediaError,
            "model_error": vigil_client.ModelError, "internal": vigil_client.InternalError,
            "some_new_code": vigil_client.VigilError,
        }
        for code, cls in cases.items():
            e = vigil_client.error_from_reply(
                {"ok": False, "error": {"code": code, "message": "m", "field": "f.g"}})
            self.assertIs(type(e), cls, code)
            self.assertEqual((e.code, e.message, e.field), (code, "m", "f.g"))
            self.assertIsInstance(e, vigil_client.VigilError)
        self.assertTrue(issubclass(vigil_client.QueueFull, vigil_client.LimitError))
        self.assertTrue(issubclass(vigil_client.BadURL, vigil_client.RequestError))
        e = vigil_client.error_from_reply({"ok": False})
        self.assertEqual(e.code, "unknown")


class ArgumentTest(unittest.TestCase):
    def setUp(self):
        self.c = vigil_client.Client(endpoint="ipc:///nonexistent/vigild.sock", timeout=0.2)

    def tearDown(self):
        self.c.close()

    def test_local_errors(self):
        with self.assertRaisesRegex(ValueError, "one of window="):
            self.c.ask("s", "q", window=30, from_media=1)
        with self.assertRaisesRegex(TypeError, "unknown sampling option"):
            self.c.ask("s", "q", temprature=1)
        with self.assertRaisesRegex(ValueError, "exactly one of every="):
            self.c.watch_add("s", "p")
        with self.assertRaisesRegex(ValueError, "exactly one of every="):
            self.c.watch_add("s", "p", every=5, on_pair=True)
        with self.assertRaisesRegex(ValueError, "need expect="):
            self.c.watch_add("s", "p", every=5, alert_on=["yes"])
        with self.assertRaisesRegex(ValueError, "unknown event kind"):
            self.c.events(kinds=["alerts"])


class UnreachableTest(unittest.TestCase):
    def test_nobody_listening(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        c = vigil_client.Client(endpoint="tcp://127.0.0.1:%d" % port, timeout=0.3)
        t0 = time.monotonic()
        with self.assertRaises(vigil_client.DaemonUnreachable) as cm:
            c.ping()
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIn("is vigild running?", str(cm.exception))
        self.assertEqual(cm.exception.code, "unreachable")
        with self.assertRaises(vigil_client.DaemonUnreachable):
            c.ask("cam", "anything?")
        c.close()


class ExamplesTest(unittest.TestCase):
    def test_examples_compile(self):
        paths = glob.glob(os.path.join(HERE, "..", "examples", "*.py"))
        self.assertGreater(len(paths), 0)
        for p in paths:
            with open(p) as f:
                compile(f.read(), p, "exec")


if __name__ == "__main__":
    unittest.main()
