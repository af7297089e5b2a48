"""The client's I/O: finding the daemon, and moving bytes to and from it with Trio.

- ``_discovery``: where the daemon is (arguments, environment, its discovery file, the default socket);
- ``_http``: HTTP/1.1 over a Unix or loopback TCP socket (h11);
- ``_ws``: the WebSocket (wsproto), imported by WebSocket followers only;
- ``_streams``: a follower's health check, its SSE and WebSocket event streams, and its polling GETs.

What the bytes mean is ``syncsnap.protocol``'s; nothing here decides when to retry.
"""

from ._discovery import find_endpoint as find_endpoint
from ._http import HttpConnection as HttpConnection
from ._streams import Poller as Poller
from ._streams import SseStream as SseStream
from ._streams import Stream as Stream
from ._streams import WsStream as WsStream
from ._streams import ask_health as ask_health
from ._streams import open_stream as open_stream
