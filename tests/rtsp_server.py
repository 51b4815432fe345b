"""An RTSP server on loopback for the `opencv` source tests, with Debian's GStreamer RTSP server
(gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good). It runs under the system python3
(python3-gi), not the project's venv: `python3 tests/rtsp_server.py PORT` serves a moving test
pattern as RTP/JPEG at rtsp://127.0.0.1:PORT/cam and prints "ready" once it listens.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
# rtpjpegpay takes 4:2:0 JPEG only: hence I420 before jpegenc
factory.set_launch(
    "( videotestsrc pattern=ball is-live=true ! video/x-raw,format=I420,width=64,height=48,framerate=25/1"
    " ! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
