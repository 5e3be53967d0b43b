"""The real vigild for the client tests: a child process on ipc:// endpoints in a temporary
directory, with the tiny golden checkpoint of the repository and an 8 s ffmpeg-made clip that
the test configuration lets it read (file streams need "file" in the allowed protocols).

The build tree is $VIGIL_BUILD (default "build"), relative to the repository root.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..")))

import vigil_client  # noqa: E402  (after the path set-up above)

GOLDEN_MODEL = os.path.join(REPO, "tests", "data", "golden", "qwen3vl-dense-tiny", "model")


def build_dir():
    b = os.environ.get("VIGIL_BUILD") or "build"
    return b if os.path.isabs(b) else os.path.join(REPO, b)


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y"] + list(args), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Daemon:
    """vigild running for a test class. ``extra`` adds top-level configuration members."""

    def __init__(self, extra=None):
        self.vigild = os.path.join(build_dir(), "bin", "vigild")
        if not os.access(self.vigild, os.X_OK):
            raise RuntimeError("%s is missing: build it (make %s)" % (self.vigild, self.vigild))
        self.dir = tempfile.mkdtemp(prefix="vigil-py-")
        try:
            self._start(extra)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _start(self, extra):
        self.endpoint = "ipc://%s/vigild.sock" % self.dir
        self.events_endpoint = "ipc://%s/events.sock" % self.dir
        self.clip = os.path.join(self.dir, "clip.mp4")
        self.image = os.path.join(self.dir, "image.png")
        self.log_path = os.path.join(self.dir, "vigild.log")
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x128:rate=4", "-t", "8",
                "-c:v", "libx264", "-pix_fmt", "yuv420p", self.clip)
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64", "-frames:v", "1", self.image)
        config = {
            "model": GOLDEN_MODEL,
            "threads": 1,                 # tests share two cores with other test programs
            "endpoint": self.endpoint,
            "events_endpoint": self.events_endpoint,
            "log_level": "info",
            "log_format": "plain",
            "sources": {"allowed_protocols": "file"},
        }
        config.update(extra or {})
        self.config_path = os.path.join(self.dir, "vigild.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=2)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([self.vigild, "--config", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout=180.0, **client_kwargs):
        """Waits until vigild answers ping (sanitizer builds load slowly)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("vigild exited with status %s during start-up:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            if os.path.exists(self.endpoint[len("ipc://"):]):
                try:
                    with self.client(timeout=2, **client_kwargs) as c:
                        c.ping()
                        return
                except vigil_client.DaemonUnreachable:
                    pass
            time.sleep(0.1)
        raise RuntimeError("vigild did not answer within %g s:\n%s" % (timeout, self.log_tail()))

    def client(self, **kwargs):
        kwargs.setdefault("endpoint", self.endpoint)
        kwargs.setdefault("events_endpoint", self.events_endpoint)
        return vigil_client.Client(**kwargs)

    def wait_pairs(self, client, stream, n, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = client.status(stream).get("stream") or {}
            if (st.get("pairs_encoded") or 0) >= n:
                return st
            time.sleep(0.1)
        raise AssertionError("stream %s has not encoded %d frame pairs within %g s:\n%s"
                             % (stream, n, timeout, self.log_tail()))

    def log_tail(self, n=6000):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def stop(self):
        """SIGTERM, then SIGKILL after 30 s. Returns the exit status."""
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                rc = None
        else:
            rc = self.proc.returncode
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc
