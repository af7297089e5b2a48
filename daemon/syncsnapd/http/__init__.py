"""Our HTTP/1.1 layer on h11: the sans-I/O protocol (validation, routing, SSE framing), the wire encodings
of progress events (SSE, JSON body, WebSocket message), the per-connection Trio adapter, and the
listeners (Unix socket with peer credentials, loopback TCP with token and Host).
"""

from ._listeners import AddressInUse as AddressInUse
from ._listeners import ListenerError as ListenerError
from ._listeners import listener_address as listener_address
from ._listeners import load_or_create_token as load_or_create_token
from ._listeners import open_tcp_listener as open_tcp_listener
from ._listeners import open_unix_listener as open_unix_listener
from ._protocol import BodyWriter as BodyWriter
from ._protocol import Headers as Headers
from ._protocol import HTTPError as HTTPError
from ._protocol import Peer as Peer
from ._protocol import Request as Request
from ._protocol import Response as Response
from ._protocol import Router as Router
from ._protocol import StreamResponse as StreamResponse
from ._protocol import UpgradeResponse as UpgradeResponse
from ._protocol import authorize as authorize
from ._protocol import error_response as error_response
from ._protocol import json_response as json_response
from ._protocol import parse_request as parse_request
from ._protocol import query_int as query_int
from ._protocol import router_app as router_app
from ._protocol import sse_comment as sse_comment
from ._protocol import sse_event as sse_event
from ._protocol import sse_retry as sse_retry
from ._server import HttpConfig as HttpConfig
from ._server import HttpServer as HttpServer
from ._server import HttpStatistics as HttpStatistics
from ._server import serve_http as serve_http
from ._wire import json_body as json_body
from ._wire import sse_progress as sse_progress
from ._wire import ws_progress as ws_progress
