"""Router-side dynamic batching for one model version: merge compatible requests, split the answer.

Requests wait in per-kind groups (same inputs, datatypes, shapes apart from the batch axis, same
requested outputs and parameters). A group is flushed when it holds max_batch_size rows, when its
rows add up exactly to a preferred size, or when its oldest request has waited max_queue_delay_us.
The flushed requests' raw inputs are concatenated along the batch axis (row-major bytes, and
BYTES tensors alike since their elements are length-prefixed in order), sent as one request, and
every raw output is split back so that each caller gets exactly its own rows.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field

from tritonclient.grpc import service_pb2

from router import tensors
from router.errors import BackendError, DeadlineExceeded, InvalidInput, Overloaded, Unavailable

log = logging.getLogger(__name__)

BackendCall = Callable[
    [service_pb2.ModelInferRequest, float | None], Awaitable[service_pb2.ModelInferResponse]
]
"""The backend call: the merged request and the timeout (seconds) of its tightest deadline."""

OnBatch = Callable[[int, str, list[float]], None]
"""Metrics hook: (rows in the batch, trigger "size" or "delay", each member's queue wait in s)."""


@dataclass(frozen=True)
class BatchPolicy:
    """How one model version's requests are batched."""

    max_batch_size: int
    max_queue_delay_us: int
    preferred_sizes: tuple[int, ...] = ()
    max_queue_depth: int = 1024
    # Batches out at the backend at once: set it to how many the backend runs in parallel (its
    # instance count). Sending more only queues them there, each having left the router smaller
    # than it could have been; held back, calls keep gathering into the next batch (Triton's
    # own batcher waits for a free instance the same way).
    max_inflight_batches: int = 1

    def __post_init__(self) -> None:
        """Raises ValueError for sizes, delays or depths that make no sense."""
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must not be negative, got {self.max_queue_delay_us}")
        if self.max_queue_depth < 1:
            raise ValueError(f"max_queue_depth must be positive, got {self.max_queue_depth}")
        if self.max_inflight_batches < 1:
            raise ValueError(f"max_inflight_batches must be positive, got {self.max_inflight_batches}")
        for size in self.preferred_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred size {size} is not between 1 and max_batch_size {self.max_batch_size}"
                )

    @property
    def max_queue_delay_s(self) -> float:
        """The queue delay in seconds."""
        return self.max_queue_delay_us / 1_000_000


@dataclass(eq=False)
class _Pending:
    """One caller's request waiting in a group (compared by identity)."""

    request: service_pb2.ModelInferRequest
    rows: int
    deadline: float | None
    enqueued: float
    future: asyncio.Future[service_pb2.ModelInferResponse]
    key: Hashable
    queued: bool = True


@dataclass
class _Group:
    """Compatible requests waiting together, oldest first, and their total rows."""

    pending: deque[_Pending] = field(default_factory=deque)
    rows: int = 0


def _params_key(params: object) -> tuple[tuple[str, bytes], ...]:
    """A hashable, order-independent form of a protobuf map<string, InferParameter>."""
    items = params.items()  # type: ignore[attr-defined]
    return tuple(sorted((k, v.SerializeToString(deterministic=True)) for k, v in items))


def compatibility_key(request: service_pb2.ModelInferRequest) -> Hashable:
    """What requests must share to be batched: inputs (name, datatype, shape after the batch
    axis, parameters), requested outputs, request parameters, model name and version."""
    return (
        request.model_name,
        request.model_version,
        tuple(
            (t.name, t.datatype, tuple(t.shape[1:]), _params_key(t.parameters)) for t in request.inputs
        ),
        tuple((o.name, _params_key(o.parameters)) for o in request.outputs),
        _params_key(request.parameters),
    )


def batch_rows(request: service_pb2.ModelInferRequest) -> int | None:
    """The request's rows (its inputs' shared leading dimension), or None when it cannot be
    batched: no inputs, an input without a batch axis, differing batch sizes, zero rows, or
    tensors not sent as raw contents."""
    if not request.inputs or len(request.raw_input_contents) != len(request.inputs):
        return None
    rows: int | None = None
    for t in request.inputs:
        if not t.shape or t.HasField("contents"):
            return None
        if rows is None:
            rows = t.shape[0]
        elif t.shape[0] != rows:
            return None
    return rows if rows else None


def _check_raw(request: service_pb2.ModelInferRequest) -> None:
    """Raises InvalidInput unless every raw input holds exactly what its shape says, so that
    concatenating it cannot shift another caller's rows."""
    for t, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        where = f"input {t.name!r}"
        tensors.check_datatype(where, t.datatype)
        tensors.check_shape(where, t.shape)
        tensors.check_raw_size(where, t.datatype, t.shape, raw)


def merge_requests(requests: Sequence[service_pb2.ModelInferRequest]) -> service_pb2.ModelInferRequest:
    """One request holding all of these (compatible) requests, concatenated along the batch axis."""
    if len(requests) == 1:
        return requests[0]
    merged = service_pb2.ModelInferRequest()
    merged.CopyFrom(requests[0])
    merged.id = ""
    del merged.raw_input_contents[:]
    total = sum(r.inputs[0].shape[0] for r in requests)
    for i, t in enumerate(merged.inputs):
        t.shape[0] = total
        merged.raw_input_contents.append(b"".join(r.raw_input_contents[i] for r in requests))
    return merged


def split_response(
    response: service_pb2.ModelInferResponse,
    requests: Sequence[service_pb2.ModelInferRequest],
    rows: Sequence[int],
) -> list[service_pb2.ModelInferResponse]:
    """Each request's own rows of every raw output of the merged response (BackendError when an
    output cannot be split: no batch axis of the total rows, or raw data not matching its shape)."""
    total = sum(rows)
    if len(response.raw_output_contents) != len(response.outputs):
        raise BackendError(
            f"batched response has {len(response.outputs)} outputs but "
            f"{len(response.raw_output_contents)} raw output contents"
        )
    answers = []
    for request in requests:
        answer = service_pb2.ModelInferResponse(
            model_name=response.model_name, model_version=response.model_version, id=request.id
        )
        for k, v in response.parameters.items():
            answer.parameters[k].CopyFrom(v)
        answers.append(answer)
    for t, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        where = f"batched output {t.name!r}"
        if not t.shape or t.shape[0] != total:
            raise BackendError(f"{where}: shape {list(t.shape)} has no batch axis of {total} rows")
        try:
            tensors.check_datatype(where, t.datatype)
            tensors.check_raw_size(where, t.datatype, t.shape, raw)
        except InvalidInput as e:
            raise BackendError(e.message) from None
        chunks = tensors.split_rows(t.datatype, t.shape, raw, rows)
        for answer, n, chunk in zip(answers, rows, chunks, strict=True):
            out = answer.outputs.add()
            out.CopyFrom(t)
            out.shape[0] = n
            answer.raw_output_contents.append(chunk)
    return answers


class Batcher:
    """Dynamic batching in front of one model version's backend call; make it in the running loop."""

    def __init__(
        self,
        policy: BatchPolicy,
        call: BackendCall,
        *,
        on_batch: OnBatch | None = None,
        name: str = "",
    ) -> None:
        """Starts the scheduler task on the running loop."""
        self.policy = policy
        self._call = call
        self._on_batch = on_batch
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._groups: dict[Hashable, _Group] = {}
        self._waiting = 0
        self._deadlines: list[tuple[float, int, _Pending]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._closed = False
        self._task = self._loop.create_task(self._schedule(), name=f"batcher {name}".strip())

    @property
    def waiting(self) -> int:
        """How many requests wait in the queue now."""
        return self._waiting

    @property
    def idle(self) -> bool:
        """Nothing waits and no batch is out: closing it now fails nobody."""
        return not self._waiting and not self._in_flight

    async def submit(
        self, request: service_pb2.ModelInferRequest, deadline: float | None
    ) -> service_pb2.ModelInferResponse:
        """The answer to this request (its own rows), sent in a batch with compatible requests.

        deadline is an absolute loop.time() or None. Raises Overloaded at once when the queue is
        full, DeadlineExceeded when the deadline passes before the request is sent, Unavailable
        once closed, InvalidInput when raw data does not match a shape, and whatever the backend
        call raised for the batch. Requests that cannot be batched (no batch axis, typed
        contents) or hold more than max_batch_size rows are sent alone, right away."""
        if self._closed:
            raise Unavailable("the batcher is closed")
        now = self._loop.time()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded("the deadline passed before the request was queued")
        rows = batch_rows(request)
        if rows is None or rows > self.policy.max_batch_size:
            return await self._send_alone(request, rows, deadline)
        _check_raw(request)
        if self._waiting >= self.policy.max_queue_depth:
            raise Overloaded(
                f"batching queue full ({self.policy.max_queue_depth} requests waiting); retry later"
            )
        key = compatibility_key(request)
        pending = _Pending(request, rows, deadline, now, self._loop.create_future(), key)
        group = self._groups.setdefault(key, _Group())
        group.pending.append(pending)
        group.rows += rows
        self._waiting += 1
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, next(self._seq), pending))
        self._wake.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._dequeue(pending)
            raise

    async def close(self) -> None:
        """Fails waiting and in-flight callers with Unavailable and stops the scheduler."""
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        for group in list(self._groups.values()):
            for pending in list(group.pending):
                self._dequeue(pending)
                if not pending.future.done():
                    pending.future.set_exception(Unavailable("the batcher was closed"))
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(self._task, *self._in_flight, return_exceptions=True)

    async def _send_alone(
        self, request: service_pb2.ModelInferRequest, rows: int | None, deadline: float | None
    ) -> service_pb2.ModelInferResponse:
        """Sends a request that is not batched straight to the backend."""
        timeout = None if deadline is None else deadline - self._loop.time()
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("the deadline passed before the request was sent")
        if rows is not None:
            self._report(rows, "size", [0.0])
        return await self._call(request, timeout)

    def _dequeue(self, pending: _Pending) -> None:
        """Takes a request out of its group if it still waits there."""
        if not pending.queued:
            return
        pending.queued = False
        group = self._groups[pending.key]
        group.pending.remove(pending)
        group.rows -= pending.rows
        self._waiting -= 1
        if not group.pending:
            del self._groups[pending.key]

    def _expire(self, now: float) -> None:
        """Fails the waiting requests whose deadline has passed, with DeadlineExceeded."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, pending = heapq.heappop(self._deadlines)
            if pending.queued:
                self._dequeue(pending)
                if not pending.future.done():
                    pending.future.set_exception(
                        DeadlineExceeded("the deadline passed while the request waited to be batched")
                    )

    def _take(self, group: _Group) -> list[_Pending]:
        """The oldest requests of a group that fit in one batch (at least one), dequeued."""
        taken: list[_Pending] = []
        rows = 0
        for pending in group.pending:
            if taken and rows + pending.rows > self.policy.max_batch_size:
                break
            taken.append(pending)
            rows += pending.rows
        for pending in taken:
            self._dequeue(pending)
        return taken

    def _flush_ready(self, now: float) -> None:
        """Starts a batch for every group that is full, at a preferred size, or waited enough.

        Nothing starts while max_inflight_batches batches are out: the calls keep gathering.
        """
        delay = self.policy.max_queue_delay_s
        for key in list(self._groups):
            while (group := self._groups.get(key)) is not None:
                if len(self._in_flight) >= self.policy.max_inflight_batches:
                    return
                if group.rows >= self.policy.max_batch_size or group.rows in self.policy.preferred_sizes:
                    trigger = "size"
                elif now - group.pending[0].enqueued >= delay:
                    trigger = "delay"
                else:
                    break
                self._start(self._take(group), trigger, now)

    def _next_wakeup(self) -> float | None:
        """When the scheduler must look again: the next group delay (unless batches are held back
        until one returns, which wakes it) or request deadline."""
        delay = self.policy.max_queue_delay_s
        held = len(self._in_flight) >= self.policy.max_inflight_batches
        times = [] if held else [g.pending[0].enqueued + delay for g in self._groups.values()]
        if len(self._deadlines) > 2 * self._waiting + 64:  # drop sent requests' entries (and bytes)
            self._deadlines = [d for d in self._deadlines if d[2].queued]
            heapq.heapify(self._deadlines)
        while self._deadlines and not self._deadlines[0][2].queued:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            times.append(self._deadlines[0][0])
        return min(times) if times else None

    async def _schedule(self) -> None:
        """The scheduler loop: expire, flush what is ready, sleep until the next event."""
        while True:
            self._wake.clear()
            now = self._loop.time()
            self._expire(now)
            self._flush_ready(now)
            wake_at = self._next_wakeup()
            timeout = None if wake_at is None else max(0.0, wake_at - self._loop.time())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _start(self, members: list[_Pending], trigger: str, now: float) -> None:
        """Runs one batch in its own task."""
        task = self._loop.create_task(self._run_batch(members, trigger, now))
        self._in_flight.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        """A batch task ended (normally its slot was freed already): the scheduler looks again."""
        self._in_flight.discard(task)
        self._wake.set()

    def _slot_free(self) -> None:
        """The running batch got its backend answer: frees its slot and starts the next batch now.

        This runs before the batch's callers are woken, so the next batch is on its way to the
        backend while the router is still answering this one's callers (otherwise the backend
        would sit idle through all those responses).
        """
        task = asyncio.current_task()
        if task is None or task not in self._in_flight:
            return
        self._in_flight.discard(task)
        if not self._closed:
            now = self._loop.time()
            self._expire(now)
            self._flush_ready(now)
        self._wake.set()

    def _report(self, rows: int, trigger: str, waits: list[float]) -> None:
        """Calls the metrics hook; its errors are logged, never raised."""
        if self._on_batch is None:
            return
        try:
            self._on_batch(rows, trigger, waits)
        except Exception:
            log.exception("batcher %s: on_batch hook failed", self._name)

    async def _run_batch(self, members: list[_Pending], trigger: str, now: float) -> None:
        """Sends the merged request and gives every member its rows or the batch's exception."""
        members = [m for m in members if not m.future.done()]  # cancelled in the meantime
        sent_at = self._loop.time()
        for m in members:
            if m.deadline is not None and m.deadline <= sent_at:  # expired since the flush
                m.future.set_exception(DeadlineExceeded("the deadline passed before the batch was sent"))
        members = [m for m in members if not m.future.done()]
        if not members:
            return
        rows = [m.rows for m in members]
        self._report(sum(rows), trigger, [now - m.enqueued for m in members])
        try:
            merged = merge_requests([m.request for m in members])
            deadlines = [m.deadline for m in members if m.deadline is not None]
            timeout = min(deadlines) - self._loop.time() if deadlines else None
            try:
                response = await self._call(merged, timeout)
            finally:
                self._slot_free()
            answers = (
                [response]
                if len(members) == 1
                else split_response(response, [m.request for m in members], rows)
            )
        except asyncio.CancelledError:
            error: BaseException = Unavailable("the batcher was closed")
            for m in members:
                if not m.future.done():
                    m.future.set_exception(error)
            raise
        except Exception as e:
            for m in members:
                if not m.future.done():
                    m.future.set_exception(e)
            return
        for m, answer in zip(members, answers, strict=True):
            if not m.future.done():
                m.future.set_result(answer)
