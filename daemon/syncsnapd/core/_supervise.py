"""Supervision of the daemon's long-running services: a failed service is logged and restarted.

Every long-running task of the daemon (folder watchers, the Syncthing event follower, the history
writer, metrics, the systemd status, retry timers) is started with :meth:`Supervisor.start` and lives in
the supervisor's nursery, opened by :meth:`Supervisor.serve`. A failure of one service never stops the
daemon or another service.

Policy:

* **Failure**: any :class:`Exception` escaping the service, bare or wrapped in (possibly nested)
  exception groups from the service's own nurseries. The error users see (:class:`ServiceError`) is
  taken from the first leaf exception: its ``code`` attribute when that is a string, else
  ``"internal_error"``, and the first line of its message (its class name when the message is empty).
* **What propagates**: cancellation is not a failure. :class:`trio.Cancelled`, ``KeyboardInterrupt``
  and any other non-``Exception`` propagate, so :meth:`Supervisor.stop` and the daemon's shutdown work
  as usual. A group holding both exceptions and a cancellation is a shutdown: its exceptions are logged
  once, only the cancellation part propagates, and the service is not restarted. So is an exception
  raised while the service is being cancelled (say, by its cleanup).
* **Stopping**: :meth:`Supervisor.stop` cancels the service (also during its backoff) and removes its
  status at once; starting the same name again waits until the old instance has finished its cleanup.
  A service cancelled from outside (shutdown, or ``start()``'s caller cancelled before ``started()``)
  is forgotten too.
* **Logging**: each failure is logged once at ERROR with the traceback of its leaf exception(s); a
  service that returns normally is logged at INFO and marked "stopped", not restarted.
* **Backoff**: the n-th consecutive failure is retried ``initial_backoff * 2 ** (n - 1)`` seconds after
  the failure (1, 2, 4, ... s), capped at ``max_backoff`` (5 min by default).
* **Healthy reset**: as soon as a retry calls ``task_status.started()`` the service is "running" again
  and its ``error`` is cleared, but its consecutive-failure count is kept until it has run for
  ``healthy_after`` seconds after ``started()``, so a service that comes up and fails again keeps
  backing off for longer; once that time has passed without failure the count goes back to 0.
  A retry that has not called ``started()`` yet keeps showing "backoff" with its last error (the first
  attempt alone shows "starting").
* **How it is shown**: :meth:`Supervisor.statuses` and :meth:`Supervisor.degraded` give a
  :class:`ServiceStatus` per service (``to_json()`` for the API), and the ``on_change`` callbacks are
  called synchronously with the new status on every change. A raising callback is logged and ignored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import trio

__all__ = ["ServiceError", "ServiceStatus", "Supervisor"]

# The error code of a failure whose exception does not name one.
INTERNAL_ERROR = "internal_error"
# Defaults: first retry after 1 s, doubling up to 5 min (a dead disk or Syncthing is not hammered, a
# recovered one is picked up within 5 min), and a service is healthy again after a minute without failing.
DEFAULT_INITIAL_BACKOFF = 1.0  # seconds
DEFAULT_MAX_BACKOFF = 300.0  # seconds
DEFAULT_HEALTHY_AFTER = 60.0  # seconds
# Past this many doublings the delay is the cap anyway; bounding the exponent avoids float overflow for a
# service that has been failing for weeks.
_MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class ServiceError:
    """The last failure of a service, as users see it."""

    code: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ServiceError:
        """The error of ``exc``, or of its first leaf exception if it is an exception group."""
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        code = getattr(exc, "code", None)
        lines = str(exc).strip().splitlines()
        return cls(code=code if isinstance(code, str) and code else INTERNAL_ERROR,
                   message=lines[0].strip() if lines else type(exc).__name__)


@dataclass(frozen=True)
class ServiceStatus:
    """The state of one supervised service.

    ``state`` is "starting" (first attempt, before ``started()``), "running", "backoff" (failed, waiting
    for ``retry_at``, or retrying and not started yet) or "stopped" (returned normally or stopped).
    """

    name: str
    state: str
    failures: int = 0
    error: ServiceError | None = None
    retry_at: float | None = None

    @property
    def degraded(self) -> bool:
        return self.state == "backoff" or self.error is not None

    def to_json(self, now: float | None = None) -> dict[str, object]:
        """The status for the API; ``now`` defaults to ``trio.current_time()``."""
        retry_in: float | None = None
        if self.retry_at is not None:
            retry_in = max(0.0, self.retry_at - (trio.current_time() if now is None else now))
        error = None if self.error is None else {"code": self.error.code, "message": self.error.message}
        return {"name": self.name, "state": self.state, "failures": self.failures, "error": error,
                "retry_in_seconds": retry_in}


@dataclass(eq=False)
class _Service:
    name: str
    fn: Callable[..., Awaitable[object]]
    args: tuple[object, ...]
    on_change: Callable[[ServiceStatus], None] | None
    status: ServiceStatus
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    helpers: trio.Nursery | None = None
    # The task status of Supervisor.start(); None once start() has been told to return.
    first: trio.TaskStatus[None] | None = None


class _Attempt(trio.TaskStatus[object]):
    """The ``task_status`` handed to one attempt of a service."""

    def __init__(self, supervisor: Supervisor, service: _Service) -> None:
        self._supervisor = supervisor
        self._service = service
        self._started = False
        self.ended = False
        self.healthy_timer = trio.CancelScope()

    def started(self, value: object = None) -> None:
        if self._started:
            raise RuntimeError("called 'started' twice on the same task status")
        self._started = True
        if not self.ended:
            self._supervisor._attempt_started(self._service, self)


def _split_failure(exc: BaseException) -> tuple[Exception | None, BaseException | None]:
    """Split what escaped a service into (failure, what must propagate)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(Exception)
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


class Supervisor:
    """Runs services in its nursery and restarts the failed ones with exponential backoff.

    Args:
        initial_backoff: seconds from the first failure to the first retry.
        max_backoff: the cap on the delay, in seconds.
        healthy_after: seconds a service must run after ``started()`` before its failure count resets.
        logger: where failures go; ``logging.getLogger("syncsnapd")`` by default.
        on_change: called with the new status of any service on every change.
    """

    def __init__(self, *, initial_backoff: float = DEFAULT_INITIAL_BACKOFF,
                 max_backoff: float = DEFAULT_MAX_BACKOFF, healthy_after: float = DEFAULT_HEALTHY_AFTER,
                 logger: logging.Logger | None = None,
                 on_change: Callable[[ServiceStatus], None] | None = None) -> None:
        if not 0 < initial_backoff <= max_backoff or healthy_after < 0:
            raise ValueError("need 0 < initial_backoff <= max_backoff and healthy_after >= 0")
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._healthy_after = healthy_after
        self._logger = logger if logger is not None else logging.getLogger("syncsnapd")
        self._on_change = on_change
        self._nursery: trio.Nursery | None = None
        self._services: dict[str, _Service] = {}
        # Services stopped whose task has not finished yet: start() of the same name waits for them.
        self._stopping: dict[str, _Service] = {}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the services' nursery until cancelled; cancelling it stops every service."""
        if self._nursery is not None:
            raise RuntimeError("this Supervisor is already serving")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def start(self, name: str, fn: Callable[..., Awaitable[object]], *args: object,
                    on_change: Callable[[ServiceStatus], None] | None = None) -> None:
        """Run ``await fn(*args, task_status=...)`` under supervision as service ``name``.

        Returns once the first attempt called ``task_status.started()``, failed (the service is then in
        backoff; the failure is not raised) or returned. If ``name`` was just stopped, waits for its
        previous task to finish first. ``on_change`` is called with this service's new statuses.

        Raises:
            RuntimeError: ``serve()`` is not running.
            ValueError: a service of that name is already starting, running or in backoff.
        """
        while (previous := self._stopping.get(name)) is not None:
            await previous.done.wait()
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("Supervisor.start() called while serve() is not running")
        current = self._services.get(name)
        if current is not None and current.status.state != "stopped":
            raise ValueError(f"service {name!r} is already running")
        service = _Service(name, fn, args, on_change, ServiceStatus(name, "starting"))
        self._services[name] = service
        self._notify(service, service.status)
        try:
            await nursery.start(self._supervise, service)
        except BaseException:
            # Our caller was cancelled before the first attempt started (or serve() is ending).
            if self._services.get(name) is service:
                del self._services[name]
            if service.status.state != "stopped":
                self._announce_stopped(service)
            raise

    def stop(self, name: str) -> None:
        """Cancel service ``name`` (also while it waits to be retried) and remove its status.

        Its task finishes at its next checkpoint; a no-op for an unknown name.
        """
        service = self._services.pop(name, None)
        if service is None:
            return
        service.scope.cancel()
        if not service.done.is_set():
            self._stopping[name] = service
        self._announce_stopped(service)

    def report(self, name: str, problem: BaseException | None) -> None:
        """A running service says it works, but degraded (``problem``), or that it is well again (None).

        For services that handle a fault themselves rather than fail (the history retries its writes while
        events wait in memory): the problem is shown like a failure's error (``degraded``, health,
        ``STATUS=``) without a restart. Unknown names, and services not running, are ignored.
        """
        service = self._services.get(name)
        if service is None or service.status.state != "running":
            return
        error = None if problem is None else ServiceError.from_exception(problem)
        self._update(service, replace(service.status, error=error))

    def statuses(self) -> list[ServiceStatus]:
        """The status of every service, sorted by name."""
        return sorted((s.status for s in self._services.values()), key=lambda status: status.name)

    def status(self, name: str) -> ServiceStatus | None:
        service = self._services.get(name)
        return None if service is None else service.status

    def degraded(self) -> list[ServiceStatus]:
        """The services in backoff or with an error, sorted by name."""
        return [status for status in self.statuses() if status.degraded]

    async def _supervise(self, service: _Service, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        service.first = task_status
        try:
            with service.scope:
                async with trio.open_nursery() as helpers:
                    service.helpers = helpers
                    while (failure := await self._attempt(service)) is not None:
                        await self._back_off(service, failure)
                    self._logger.info("service %s returned; not restarting it", service.name)
                    self._update(service, replace(service.status, state="stopped", error=None, retry_at=None))
            self._release_start(service)
        finally:
            if self._stopping.get(service.name) is service:
                del self._stopping[service.name]
            # Cancelled from outside (shutdown, or start()'s caller gave up): forget the service.
            if self._services.get(service.name) is service and service.status.state != "stopped":
                del self._services[service.name]
            service.done.set()

    async def _attempt(self, service: _Service) -> Exception | None:
        """Run one attempt; return its failure, None if it returned, or raise its cancellation."""
        attempt = _Attempt(self, service)
        try:
            await service.fn(*service.args, task_status=attempt)
        except BaseException as exc:
            failure, propagate = _split_failure(exc)
            if propagate is None:
                return failure
            if failure is None:
                raise
            self._logger.error("service %s failed while being cancelled (%s)", service.name,
                               ServiceError.from_exception(failure).message, exc_info=failure)
            raise propagate from None
        finally:
            attempt.ended = True
            attempt.healthy_timer.cancel()
        return None

    async def _back_off(self, service: _Service, failure: Exception) -> None:
        error = ServiceError.from_exception(failure)
        if trio.current_effective_deadline() == -math.inf:
            # Failed while being stopped or shut down (e.g. in its cleanup): report, don't retry.
            self._logger.error("service %s failed while being cancelled (%s)", service.name,
                               error.message, exc_info=failure)
            await trio.lowlevel.checkpoint()
        failures = service.status.failures + 1
        delay = min(self._max_backoff, self._initial_backoff * 2.0 ** min(failures - 1, _MAX_DOUBLINGS))
        retry_at = trio.current_time() + delay
        self._logger.error("service %s failed (%s: %s); restarting in %g s", service.name, error.code,
                           error.message, delay, exc_info=failure)
        self._update(service, replace(service.status, state="backoff", failures=failures, error=error,
                                      retry_at=retry_at))
        self._release_start(service)
        await trio.sleep_until(retry_at)

    def _attempt_started(self, service: _Service, attempt: _Attempt) -> None:
        failures = service.status.failures
        self._update(service, replace(service.status, state="running", error=None, retry_at=None))
        if failures and service.helpers is not None:
            service.helpers.start_soon(self._reset_when_healthy, service, attempt.healthy_timer)
        self._release_start(service)

    async def _reset_when_healthy(self, service: _Service, timer: trio.CancelScope) -> None:
        with timer:
            await trio.sleep(self._healthy_after)
            self._update(service, replace(service.status, failures=0))

    def _release_start(self, service: _Service) -> None:
        """Let the Supervisor.start() call of this service return (once)."""
        first, service.first = service.first, None
        if first is not None:
            first.started()

    def _announce_stopped(self, service: _Service) -> None:
        service.status = replace(service.status, state="stopped", error=None, retry_at=None)
        self._notify(service, service.status)

    def _update(self, service: _Service, new: ServiceStatus) -> None:
        """Record and announce ``new``, unless it changes nothing or the service was stopped."""
        if new != service.status and self._services.get(service.name) is service:
            service.status = new
            self._notify(service, new)

    def _notify(self, service: _Service, status: ServiceStatus) -> None:
        for callback in (self._on_change, service.on_change):
            if callback is None:
                continue
            try:
                callback(status)
            except Exception:
                self._logger.exception("on_change callback failed for service %s", service.name)
