"""The client's protocol layer, sans-I/O (as h11 is): no sockets, no clock, no Trio.

Bytes and messages in, meaning out; inputs with their time in, what to do next out. Everything here is
testable without an event loop; the transports (``syncsnap.transport``) move the bytes, and the
follower (``syncsnap._follow``) drives these pieces with Trio.

- ``_sse``: the event-stream parser (bytes in, events and comments out);
- ``_answers``: HTTP answers and the exception each error answer becomes;
- ``_messages``: where a follower reads, and what its SSE events and WebSocket messages mean;
- ``_ordering``: which events are yielded (order and dedup by id, gaps, lanes, the followed run's end);
- ``_policy``: when to read, ping, reconnect, poll and retry (a state machine).
"""

from ._answers import HINTS as HINTS
from ._answers import Response as Response
from ._answers import error_for_response as error_for_response
from ._messages import API as API
from ._messages import CLOSE_POLICY as CLOSE_POLICY
from ._messages import TRANSPORTS as TRANSPORTS
from ._messages import WS_TARGET as WS_TARGET
from ._messages import FollowTargets as FollowTargets
from ._messages import Gap as Gap
from ._messages import Item as Item
from ._messages import Reply as Reply
from ._messages import TooSlow as TooSlow
from ._messages import Transport as Transport
from ._messages import parse_progress as parse_progress
from ._messages import sse_items as sse_items
from ._messages import subscribe_command as subscribe_command
from ._messages import ws_end_reason as ws_end_reason
from ._messages import ws_error as ws_error
from ._messages import ws_items as ws_items
from ._ordering import UPTIME_SLACK_SECONDS as UPTIME_SLACK_SECONDS
from ._ordering import EventOrder as EventOrder
from ._ordering import run_time as run_time
from ._policy import TRANSIENT as TRANSIENT
from ._policy import Action as Action
from ._policy import AttemptFailed as AttemptFailed
from ._policy import CheckRun as CheckRun
from ._policy import FollowPolicy as FollowPolicy
from ._policy import FollowStatistics as FollowStatistics
from ._policy import OpenStream as OpenStream
from ._policy import Ping as Ping
from ._policy import Poll as Poll
from ._policy import Read as Read
from ._policy import Schedule as Schedule
from ._policy import Sleep as Sleep
from ._sse import MAX_SSE_LINE as MAX_SSE_LINE
from ._sse import SseComment as SseComment
from ._sse import SseEvent as SseEvent
from ._sse import SseParser as SseParser
