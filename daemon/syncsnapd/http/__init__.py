"""Our HTTP/1.1 layer on h11. The sans-I/O protocol: the messages (``_messages``), request validation
(``_validation``), routing (``_routing``), authorization (``_authorization``), SSE framing
(``_sse``), the wire encodings of progress events (``_wire``: SSE event, JSON body, WebSocket message)
and response heads (``_heads``). The Trio adapter: the server (``_server``: listeners, connection cap,
statistics, shutdown), one ``_connection`` per client (read loop, keep-alive, timeouts, error answers)
and ``_streaming`` bodies, sharing a ``_context`` and ``_config``. The listeners (``_listeners``: Unix
socket with peer credentials, loopback TCP with token and Host). The dashboard's logins (``_sessions``:
one-time login codes and session cookies, by hash, mirrored in a 0600 file).
"""

from ._authorization import Access as Access
from ._authorization import authorize as authorize
from ._authorization import check_access as check_access
from ._authorization import session_cookies as session_cookies
from ._config import HttpConfig as HttpConfig
from ._listeners import AddressInUse as AddressInUse
from ._listeners import ListenerError as ListenerError
from ._listeners import listener_address as listener_address
from ._listeners import load_or_create_token as load_or_create_token
from ._listeners import open_tcp_listener as open_tcp_listener
from ._listeners import open_unix_listener as open_unix_listener
from ._messages import Auth as Auth
from ._messages import BodyWriter as BodyWriter
from ._messages import Headers as Headers
from ._messages import HTTPError as HTTPError
from ._messages import Peer as Peer
from ._messages import Request as Request
from ._messages import Response as Response
from ._messages import StreamResponse as StreamResponse
from ._messages import UpgradeResponse as UpgradeResponse
from ._messages import error_response as error_response
from ._messages import json_response as json_response
from ._routing import Router as Router
from ._routing import router_app as router_app
from ._server import HttpServer as HttpServer
from ._server import HttpStatistics as HttpStatistics
from ._server import serve_http as serve_http
from ._sessions import LOGIN_CODE_SECONDS as LOGIN_CODE_SECONDS
from ._sessions import SESSION_COOKIE as SESSION_COOKIE
from ._sessions import SESSION_SECONDS as SESSION_SECONDS
from ._sessions import SessionStore as SessionStore
from ._sse import sse_comment as sse_comment
from ._sse import sse_event as sse_event
from ._sse import sse_retry as sse_retry
from ._validation import parse_decimal as parse_decimal
from ._validation import parse_request as parse_request
from ._validation import query_int as query_int
from ._wire import json_body as json_body
from ._wire import sse_progress as sse_progress
from ._wire import ws_progress as ws_progress
