"""The vigil client: vigild's JSON-over-ZeroMQ protocol (docs/protocol.md) from Python.

A ``Client`` owns one DEALER socket to vigild's request endpoint. Requests get unique ids, so
several answers may be in flight on one client (frames are routed to their request by id);
a client is not thread-safe (ZeroMQ sockets are not): use one per thread.
"""

import base64
import collections
import datetime
import itertools
import json
import os
import time
import uuid
import weakref

import zmq

from .errors import (
    DaemonUnreachable,
    ProtocolError,
    VigilError,
    error_from_reply,
)

DEFAULT_ENDPOINT = "ipc:///run/vigil/vigild.sock"
DEFAULT_EVENTS_ENDPOINT = "ipc:///run/vigil/events.sock"
PROTOCOL_VERSION = 1

_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                  "presence_penalty", "seed", "stop")
_EVENT_KINDS = {"state": "stream.", "watch": "watch.", "alert": "alert.", "daemon": "daemon"}


def _read_key(value, secret):
    """A Z85 key (40 characters) given as text/bytes, or read from a file: a bare key line or a
    ZeroMQ certificate line ``public-key = "..."`` / ``secret-key = "..."``."""
    what = "secret" if secret else "public"
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    value = os.fspath(value)
    if len(value) == 40 and not os.path.exists(value):
        return value.encode("ascii")
    try:
        with open(value, "r", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError("%r is neither a CURVE %s key (40 Z85 characters) nor a readable key "
                         "file: %s" % (value, what, e.strerror)) from None
    field = "secret-key" if secret else "public-key"
    bare = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(field):
            parts = line.split('"')
            if len(parts) >= 3 and len(parts[1]) == 40:
                return parts[1].encode("ascii")
        elif len(line) == 40 and " " not in line:
            bare.append(line)
    if len(bare) == 1:
        return bare[0].encode("ascii")
    raise ValueError("key file %r has no CURVE %s key: expected a line with 40 Z85 characters "
                     "or a ZeroMQ certificate line %s = \"...\"" % (value, what, field))


def derive_events_endpoint(endpoint):
    """The events endpoint beside a request endpoint, as vigild's defaults place them: the same
    directory for ``ipc://.../vigild.sock``. None when it cannot be told."""
    if endpoint == DEFAULT_ENDPOINT:
        return DEFAULT_EVENTS_ENDPOINT
    if endpoint.startswith("ipc://") and endpoint.endswith("vigild.sock"):
        return endpoint[: -len("vigild.sock")] + "events.sock"
    return None


def _wall(value, name):
    """A wall-clock window end: datetime (naive = local time), Unix seconds, or RFC 3339 text."""
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value
    raise TypeError("%s: expected a datetime, Unix seconds or an RFC 3339 string, got %r"
                    % (name, value))


def _put(msg, key, value):
    if value is not None:
        msg[key] = value


def _sampling(kwargs):
    unknown = set(kwargs) - set(_SAMPLING_KEYS)
    if unknown:
        raise TypeError("unknown sampling option(s): %s (expected: %s)"
                        % (", ".join(sorted(unknown)), ", ".join(_SAMPLING_KEYS)))
    s = {k: v for k, v in kwargs.items() if v is not None}
    if isinstance(s.get("stop"), (list, tuple)):
        s["stop"] = list(s["stop"])
    return s


class Answer:
    """An answer being generated: iterate it for the text pieces as they arrive.

    After the iteration ends, ``done`` is the final frame and ``text``, ``finish_reason``,
    ``usage`` and ``timing`` describe the answer. Leaving a ``with`` block (or calling
    ``cancel()``) before the end cancels the answer in the daemon.
    """

    def __init__(self, client, request_id, timeout):
        self._client = client
        self.id = request_id
        self._timeout = timeout
        self._parts = []
        self.done = None

    def __iter__(self):
        return self

    def __next__(self):
        while self.done is None:
            frame = self._client._next_frame(self.id, self._timeout, started=bool(self._parts))
            if "ok" in frame:
                self._client._forget(self.id)
                if frame.get("ok") is not True:
                    self.done = frame
                    raise error_from_reply(frame)
                self.done = frame
                break
            if frame.get("event") == "token" and isinstance(frame.get("text"), str):
                self._parts.append(frame["text"])
                if frame["text"]:
                    return frame["text"]
        raise StopIteration

    def wait(self):
        """Consumes the rest of the answer; returns its full text."""
        for _ in self:
            pass
        return self.text

    @property
    def text(self):
        if self.done is not None and isinstance(self.done.get("text"), str):
            return self.done["text"]
        return "".join(self._parts)

    @property
    def finish_reason(self):
        return self.done.get("finish_reason") if self.done else None

    @property
    def usage(self):
        return self.done.get("usage") if self.done else None

    @property
    def timing(self):
        return self.done.get("timing") if self.done else None

    def cancel(self, wait=10.0):
        """Asks vigild to stop this answer; waits up to ``wait`` seconds for its final frame.
        Returns True when the daemon confirmed (or the answer had already ended)."""
        if self.done is not None:
            return True
        try:
            self._client.cancel(self.id)
        except VigilError:
            pass                        # already finished: its done frame is on its way
        deadline = time.monotonic() + wait
        try:
            while self.done is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                frame = self._client._next_frame(self.id, left, started=True)
                if "ok" in frame:
                    self.done = frame
                    self._client._forget(self.id)
        except DaemonUnreachable:
            return False
        return True

    def close(self):
        if self.done is None:
            self.cancel()
            self._client._forget(self.id)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Event:
    """One event from vigild's PUB socket: ``topic`` ("stream.gate", "alert.door" ...),
    ``name`` (the "event" member: "stream.state", "watch.answer", "alert", "daemon.state")
    and ``data`` (the whole JSON object; ``event["stream"]`` reads a member)."""

    __slots__ = ("topic", "name", "data")

    def __init__(self, topic, data):
        self.topic = topic
        self.name = data.get("event")
        self.data = data

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)

    def __repr__(self):
        return "Event(%r, %r)" % (self.topic, self.data)


class EventStream:
    """Iterator over events (see ``Client.events``). Stops after ``timeout`` seconds without a
    matching event when a timeout was given; ``close()`` (or ``with``) releases the socket."""

    def __init__(self, client, endpoint, stream=None, watch=None, kinds=None, timeout=None):
        kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
        for k in kinds:
            if k not in _EVENT_KINDS:
                raise ValueError("unknown event kind %r; expected one of %s"
                                 % (k, ", ".join(_EVENT_KINDS)))
        self._stream, self._watch, self._kinds = stream, watch, set(kinds)
        self._timeout = timeout
        self._sock = client._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        client._apply_curve(self._sock)
        for topic in self._topics():
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
        self._sock.connect(endpoint)
        self.endpoint = endpoint

    def _topics(self):
        kinds = self._kinds or set(_EVENT_KINDS)
        if self._watch:
            kinds &= {"watch", "alert"}
        if self._stream:
            kinds -= {"daemon"}
        topics = []
        for k in sorted(kinds):
            if k == "state":
                topics.append("stream." + (self._stream or ""))
            elif k in ("watch", "alert"):
                topics.append(_EVENT_KINDS[k] + (self._watch or ""))
            else:
                topics.append("daemon")
        return topics or ["none."]

    def _wanted(self, topic, data):
        # Topic prefixes also match longer names (stream.cam1 / stream.cam10).
        if self._stream is not None and data.get("stream") != self._stream:
            return False
        if self._watch is not None and data.get("watch") != self._watch:
            return False
        if self._kinds:
            kind = next((k for k, p in _EVENT_KINDS.items() if topic.startswith(p)), None)
            if kind not in self._kinds:
                return False
        return True

    def __iter__(self):
        return self

    def __next__(self):
        if self._sock is None:
            raise StopIteration
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if deadline is not None and left <= 0:
                raise StopIteration
            if not self._sock.poll(None if left is None else int(left * 1000) + 1):
                continue
            parts = self._sock.recv_multipart()
            if len(parts) != 2:
                continue
            try:
                topic = parts[0].decode("utf-8")
                data = json.loads(parts[1].decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(data, dict) and self._wanted(topic, data):
                return Event(topic, data)

    def close(self):
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Client:
    """A connection to vigild.

    endpoint         request socket; default $VIGIL_ENDPOINT or ipc:///run/vigil/vigild.sock
    events_endpoint  PUB socket; default $VIGIL_EVENTS_ENDPOINT, or events.sock beside an
                     ipc://.../vigild.sock endpoint
    server_key       vigild's CURVE public key (Z85 text or a key file); $VIGIL_SERVER_KEY
    client_keys      this client's CURVE keys: a (public, secret) pair, a secret key, or a key
                     file; $VIGIL_CLIENT_KEY_FILE / $VIGIL_CLIENT_SECRET_KEY; required with a
                     server key (vigild admits the client keys its configuration lists)
    timeout          seconds to wait for a reply to a control request (and for vigild to
                     answer at all before a question)
    answer_timeout   seconds to wait for each part of an answer (a question may queue)
    """

    def __init__(self, endpoint=None, events_endpoint=None, server_key=None, client_keys=None,
                 timeout=5.0, answer_timeout=300.0, context=None):
        env = os.environ
        self.endpoint = endpoint or env.get("VIGIL_ENDPOINT") or DEFAULT_ENDPOINT
        self.events_endpoint = (events_endpoint or env.get("VIGIL_EVENTS_ENDPOINT")
                                or derive_events_endpoint(self.endpoint))
        self.timeout = float(timeout)
        self.answer_timeout = float(answer_timeout)
        server_key = server_key or env.get("VIGIL_SERVER_KEY")
        if client_keys is None:
            client_keys = env.get("VIGIL_CLIENT_KEY_FILE") or env.get("VIGIL_CLIENT_SECRET_KEY")
        self._curve = None
        if server_key:
            spub = _read_key(server_key, secret=False)
            if client_keys is None:
                # vigild admits only the client keys its configuration lists.
                raise ValueError("server_key given without client_keys: give this client's "
                                 "keys (client_keys= or VIGIL_CLIENT_KEY_FILE); its public key "
                                 "must be in vigild's curve.client_keys")
            if isinstance(client_keys, (tuple, list)):
                cpub, csec = (k.encode("ascii") if isinstance(k, str) else k for k in client_keys)
            else:
                csec = _read_key(client_keys, secret=True)
                cpub = zmq.curve_public(csec)
            self._curve = (spub, cpub, csec)
        elif client_keys is not None:
            raise ValueError("client_keys given without server_key: give vigild's public key "
                             "(server_key= or VIGIL_SERVER_KEY)")
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._apply_curve(self._sock)
        self._sock.connect(self.endpoint)
        self._prefix = "py-%d-%s-" % (os.getpid(), uuid.uuid4().hex[:8])
        self._seq = itertools.count(1)
        self._pending = {}              # request id -> deque of frames not yet consumed
        self._event_streams = weakref.WeakSet()
        self._closed = False

    # -- plumbing --------------------------------------------------------------------------

    def _apply_curve(self, sock):
        if self._curve:
            spub, cpub, csec = self._curve
            sock.curve_serverkey = spub
            sock.curve_publickey = cpub
            sock.curve_secretkey = csec

    def close(self):
        """Closes the sockets (and the ZeroMQ context, if the client made it)."""
        if self._closed:
            return
        self._closed = True
        # Context.term() waits for every socket of the context: close the event streams too.
        for es in list(self._event_streams):
            es.close()
        self._sock.close(0)
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _send(self, op, fields, request_id=None):
        if self._closed:
            raise VigilError("the client is closed", code="closed")
        rid = request_id or self._prefix + str(next(self._seq))
        msg = {"v": PROTOCOL_VERSION, "id": rid, "op": op}
        msg.update({k: v for k, v in fields.items() if v is not None})
        data = json.dumps(msg, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self._pending[rid] = collections.deque()
        if not self._sock.poll(int(self.timeout * 1000), zmq.POLLOUT):
            self._pending.pop(rid, None)
            raise DaemonUnreachable("could not send to %s within %g s" % (self.endpoint,
                                                                          self.timeout))
        self._sock.send(data, zmq.NOBLOCK)
        return rid

    def _forget(self, rid):
        self._pending.pop(rid, None)

    def _next_frame(self, rid, timeout, started=False):
        """The next frame of request rid, routing frames of other requests to their queues."""
        queue = self._pending.get(rid)
        if queue:
            return queue.popleft()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if started:
                    raise DaemonUnreachable("vigild (%s) stopped answering: nothing more within "
                                            "%g s" % (self.endpoint, timeout))
                raise DaemonUnreachable("no answer from %s within %g s: is vigild running?%s"
                                        % (self.endpoint, timeout,
                                           " (or are the CURVE keys wrong?)" if self._curve
                                           else ""))
            if not self._sock.poll(max(1, int(left * 1000))):
                continue
            raw = self._sock.recv(zmq.NOBLOCK)
            try:
                frame = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise ProtocolError("vigild sent a frame that is not JSON: %s" % e) from None
            if not isinstance(frame, dict):
                raise ProtocolError("vigild sent a frame that is not a JSON object")
            fid = frame.get("id")
            if fid == rid or (fid is None and "ok" in frame):
                # A final frame with id null answers a request whose id vigild could not read:
                # ours, as it is the one being waited for.
                return frame
            if fid in self._pending:
                self._pending[fid].append(frame)
            # else: a late frame of an abandoned request

    def _call(self, op, timeout=None, **fields):
        timeout = self.timeout if timeout is None else timeout
        rid = self._send(op, fields)
        try:
            while True:
                frame = self._next_frame(rid, timeout)
                if "ok" in frame:
                    break
        finally:
            self._forget(rid)
        if frame.get("ok") is not True:
            raise error_from_reply(frame)
        return frame

    # -- daemon ----------------------------------------------------------------------------

    def ping(self, timeout=None):
        """Checks that vigild answers. Returns the reply (``version``) plus ``rtt_ms``."""
        t0 = time.monotonic()
        reply = self._call("ping", timeout=timeout)
        reply["rtt_ms"] = (time.monotonic() - t0) * 1000
        return reply

    def status(self, stream=None):
        """Daemon-wide figures and per-stream status objects (docs/protocol.md, status)."""
        return self._call("status", stream=stream)

    # -- streams ---------------------------------------------------------------------------

    def stream_add(self, stream, url, fps=None, tokens_per_pair=None, max_tokens_per_pair=None,
                   cache_tokens=None, cache_bytes=None, system_prompt=None, loop=None,
                   realtime=None, start_offset=None, rtsp_transport=None, decoder_threads=None,
                   timeout_ms=None):
        """Starts watching a source. ``tokens_per_pair``: an int (fixed budget) or a
        (min, max) pair of visual tokens per frame pair. Returns the stream's status object."""
        tpp = None
        if tokens_per_pair is not None:
            if isinstance(tokens_per_pair, (tuple, list)):
                tpp = {"min": tokens_per_pair[0], "max": tokens_per_pair[1]}
            else:
                tpp = {"min": tokens_per_pair, "max": tokens_per_pair}
        options = {}
        for k, v in (("loop", loop), ("realtime", realtime), ("start_offset", start_offset),
                     ("rtsp_transport", rtsp_transport), ("decoder_threads", decoder_threads),
                     ("timeout_ms", timeout_ms)):
            _put(options, k, v)
        reply = self._call("stream.add", stream=stream, url=url, fps=fps, tokens_per_pair=tpp,
                           max_tokens_per_pair=max_tokens_per_pair, cache_tokens=cache_tokens,
                           cache_bytes=cache_bytes, system_prompt=system_prompt,
                           options=options or None)
        return reply.get("stream")

    def stream_remove(self, stream):
        self._call("stream.remove", stream=stream)

    def streams(self):
        """The status objects of every stream."""
        return self._call("stream.list").get("streams", [])

    # -- questions -------------------------------------------------------------------------

    def _ensure_alive(self):
        # A question may wait long for its first token; a daemon that is not there at all
        # should be reported after `timeout`, not `answer_timeout`.
        self.ping()

    def ask(self, stream, prompt, window=None, from_media=None, to_media=None, from_wall=None,
            to_wall=None, max_tokens=None, stream_tokens=True, **sampling):
        """Asks about a stream; returns an ``Answer`` to iterate for the text as it arrives.

        window                 the last N seconds of media
        from_media, to_media   seconds since the stream began
        from_wall, to_wall     datetimes, Unix seconds or RFC 3339 strings
        sampling               temperature, top_k, top_p, min_p, repetition_penalty,
                               presence_penalty, seed, stop
        """
        forms = [window is not None, from_media is not None or to_media is not None,
                 from_wall is not None or to_wall is not None]
        if sum(forms) > 1:
            raise ValueError("give one of window=, from_media/to_media and from_wall/to_wall")
        win = None
        if window is not None:
            win = {"last_seconds": window}
        elif forms[1]:
            win = {}
            _put(win, "from_media", from_media)
            _put(win, "to_media", to_media)
        elif forms[2]:
            win = {}
            if from_wall is not None:
                win["from_wall"] = _wall(from_wall, "from_wall")
            if to_wall is not None:
                win["to_wall"] = _wall(to_wall, "to_wall")
        fields = {"stream": stream, "prompt": prompt, "window": win, "max_tokens": max_tokens,
                  "sampling": _sampling(sampling) or None,
                  "stream_tokens": None if stream_tokens else False}
        self._ensure_alive()
        return Answer(self, self._send("query", fields), self.answer_timeout)

    def ask_text(self, stream, prompt, **kwargs):
        """``ask`` without token streaming: returns the whole answer text."""
        with self.ask(stream, prompt, stream_tokens=False, **kwargs) as answer:
            return answer.wait()

    def image(self, image, prompt, max_tokens=None, stream_tokens=True, daemon_path=False,
              **sampling):
        """Asks about one image: ``image`` is a file path (read here and sent, so the daemon
        needs no access to it), bytes, or a binary file object. ``daemon_path=True`` sends the
        path instead, for the daemon to read (if its configuration allows). Returns an
        ``Answer``."""
        fields = {"prompt": prompt, "max_tokens": max_tokens,
                  "sampling": _sampling(sampling) or None,
                  "stream_tokens": None if stream_tokens else False}
        if daemon_path:
            fields["path"] = os.path.abspath(os.fspath(image))
        else:
            if isinstance(image, (bytes, bytearray, memoryview)):
                data = bytes(image)
            elif hasattr(image, "read"):
                data = image.read()
            else:
                with open(image, "rb") as f:
                    data = f.read()
            fields["data_base64"] = base64.b64encode(data).decode("ascii")
        self._ensure_alive()
        return Answer(self, self._send("image", fields), self.answer_timeout)

    def image_text(self, image, prompt, **kwargs):
        with self.image(image, prompt, stream_tokens=False, **kwargs) as answer:
            return answer.wait()

    def cancel(self, query_id):
        """Cancels a query or image request this client sent (by its id, ``Answer.id``)."""
        return self._call("query.cancel", query=query_id)

    # -- watches ---------------------------------------------------------------------------

    def watch_add(self, stream, prompt, every=None, on_pair=False, name=None, window=None,
                  max_tokens=None, expect=None, alert_on=None, alert_repeat=None,
                  cooldown=None, **sampling):
        """A standing question: asked every ``every`` seconds or after each new frame pair
        (``on_pair=True``); answers (and alerts) are published as events.

        expect   "yes_no", or a list of allowed answers (an enum), or a full expect object
        alert_on values that raise an alert (default: "yes" for yes_no, none for an enum)
        Returns the watch's id.
        """
        if (every is None) == (not on_pair):
            raise ValueError("give exactly one of every= (seconds) and on_pair=True")
        exp = None
        if isinstance(expect, dict):
            exp = dict(expect)
        elif expect == "yes_no":
            exp = {"type": "yes_no"}
        elif isinstance(expect, (list, tuple)):
            exp = {"type": "enum", "values": list(expect)}
        elif expect is not None:
            raise ValueError("expect: expected \"yes_no\", a list of values or an object, got %r"
                             % (expect,))
        if exp is None and (alert_on is not None or alert_repeat is not None
                            or cooldown is not None):
            raise ValueError("alert_on, alert_repeat and cooldown need expect=")
        if exp is not None:
            _put(exp, "alert_on", list(alert_on) if alert_on is not None else None)
            _put(exp, "alert_repeat", alert_repeat)
            _put(exp, "cooldown_seconds", cooldown)
        reply = self._call("watch.add", stream=stream, prompt=prompt, name=name,
                           every_seconds=every, on_pair=True if on_pair else None,
                           window={"last_seconds": window} if window is not None else None,
                           max_tokens=max_tokens, sampling=_sampling(sampling) or None,
                           expect=exp)
        return reply.get("watch")

    def watch_remove(self, watch):
        self._call("watch.remove", watch=watch)

    def watches(self, stream=None):
        return self._call("watch.list", stream=stream).get("watches", [])

    # -- events ----------------------------------------------------------------------------

    def events(self, stream=None, watch=None, kinds=None, timeout=None):
        """Follows vigild's events. ``kinds``: "state", "watch", "alert", "daemon" (or a list);
        ``stream``/``watch`` filter on those members. With ``timeout`` the iteration ends
        after that many seconds without a matching event. Returns an ``EventStream``."""
        if not self.events_endpoint:
            raise ValueError("cannot tell the events endpoint from %s: give events_endpoint= "
                             "or VIGIL_EVENTS_ENDPOINT" % self.endpoint)
        es = EventStream(self, self.events_endpoint, stream=stream, watch=watch, kinds=kinds,
                         timeout=timeout)
        self._event_streams.add(es)
        return es
