#!/usr/bin/python3
"""media_rtsp_server.py PORT FILE [MOUNT] -- a real RTSP server on 127.0.0.1 for the ingest
tests (GStreamer's RTSP server through python3-gi). Streams an H.264 MP4 FILE at its own pace
on rtsp://127.0.0.1:PORT/MOUNT (default /cam), to clients over TCP or UDP, like a camera.
Prints "ready" once listening. Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-plugins-base gstreamer1.0-plugins-good."""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    port, path = sys.argv[1], sys.argv[2]
    mount = sys.argv[3] if len(sys.argv) > 3 else "/cam"
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( filesrc location=%s ! qtdemux ! rtph264pay name=pay0 pt=96 config-interval=1 )" % path)
    factory.set_shared(True)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        sys.stderr.write("cannot listen on 127.0.0.1:%s\n" % port)
        return 1
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
