"""Streamed uploads to an object store (:class:`S3Store`): each object's bytes fill parts of
``part_size_mib`` in the writer's thread, and full parts go out with boto3's ``upload_part``
from ``parts_in_flight`` threads, so the memory held is bounded (:func:`memory_bound`). A failed
or cancelled upload is aborted (no orphaned multipart upload to bill)."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from studyhub.ops.backup.s3 import MIB, S3Store
from studyhub.ops.backup.setformat import BackupError
from studyhub.profiles import BackupConfig

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def pin_mmap_threshold() -> None:
    """Serve the parts' buffers (MiB each) from mmap, returned to the system when freed:
    glibc otherwise raises its mmap threshold after the first frees and keeps the parts in its
    heap, whose fragments made the process grow with the amount uploaded (+30 MiB per GiB
    measured; flat with this). Nothing happens where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def memory_bound(config: BackupConfig, streams: int) -> int:
    """What one run's uploads may hold in memory: the part each of ``streams`` streams is
    filling, ``parts_in_flight`` parts being sent, and one part being let go."""
    return (config.parts_in_flight + streams + 1) * config.part_size_mib * MIB


class Uploader:
    """The uploads of one backup run. Each stream (:meth:`stream`) becomes one object: its
    bytes fill a part buffer in the writer's own thread, and each full part is handed to one
    of ``parts_in_flight`` threads that send it with ``upload_part`` (botocore retries each
    request, with backoff). At most ``parts_in_flight`` parts are out at once over all
    streams; a stream whose next part is full waits for a free slot (bounded memory).

    Measured against s3transfer's upload of a non-seekable stream (a pipe between the writer
    and its reading threads, the part read back in 16 KiB blocks while it is sent), which this
    replaced: one hand-over per part instead of one per pipe write (docs/backup.md). A closed
    stream's last requests (its last part, the completion) finish in the background while the
    writer goes on to its next object; :meth:`wait` is where every object is known complete
    (before the manifest). Leaving the ``with`` block by an exception (Ctrl-C too) abandons
    every unfinished upload: its multipart upload is aborted."""

    def __init__(self, store: S3Store, streams: int) -> None:
        self.store = store
        self.streams = streams
        self.part_bytes = store.config.part_size_mib * MIB
        self.slots = threading.BoundedSemaphore(store.config.parts_in_flight)
        self.pool: ThreadPoolExecutor | None = None
        self.sinks: list[UploadSink] = []
        self._free: list[bytearray] = []  # part buffers sent and back, to fill again
        self._free_lock = threading.Lock()
        self.finisher: ThreadPoolExecutor | None = None
        self.finishing: list[Future] = []
        self.failure: BaseException | None = None  # the first object that could not finish
        self.sizes: dict[str, int] = {}  # each complete object's size, as the store answers it

    def take_buffer(self) -> bytearray:
        """A part buffer: one that was sent already, else a new one. Reusing them spares
        the page faults and zeroing of a fresh 8 MiB each part (measured: ~0.6 CPU-s per
        368 MB uploaded); there are never more than the memory bound's count."""
        with self._free_lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.part_bytes)

    def give_back(self, buf: bytearray) -> None:
        if len(buf) == self.part_bytes:
            with self._free_lock:
                self._free.append(buf)

    def __enter__(self) -> "Uploader":
        pin_mmap_threshold()
        self.pool = ThreadPoolExecutor(max_workers=self.store.config.parts_in_flight,
                                       thread_name_prefix="studyhub-upload")
        self.finisher = ThreadPoolExecutor(max_workers=max(1, self.streams),
                                           thread_name_prefix="studyhub-upload-finish")
        return self

    def finish_later(self, step: Callable[[], None]) -> None:
        """Run a closed object's last step in the background (its failure is kept for
        :meth:`wait` and stops every stream's next part)."""
        def run() -> None:
            try:
                step()
            except BaseException as exc:
                if self.failure is None:
                    self.failure = exc
                raise

        assert self.finisher is not None
        self.finishing.append(self.finisher.submit(run))

    def wait(self) -> dict[str, int]:
        """Every closed object is complete in the store: their sizes as the store gave them
        when asked (``HEAD``) right after each upload completed, by name. Or the first failure
        is raised (one line)."""
        wait(self.finishing)
        for f in self.finishing:
            exc = f.exception()
            if exc is not None:
                raise self.store.error(exc, "uploading") from None
        return dict(self.sizes)

    def confirm(self, rel: str) -> None:
        """Ask the store for a just-completed object's size. Done here, in the background
        step, rather than by listing the set at its end: the store's work of answering (rclone
        hashes each object the first time it is asked: 0.14 s per 100 MB) overlaps the tables
        still being written instead of adding a serial step to the run (measured 0.58 s for a
        368 MB set, docs/backup.md)."""
        self.sizes[rel] = self.store.size(rel)

    def stream(self, rel: str) -> "UploadSink":
        assert self.pool is not None
        sink = UploadSink(self, rel)
        self.sinks.append(sink)
        return sink

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        assert self.pool is not None
        assert self.finisher is not None
        if exc_type is not None:
            for s in self.sinks:
                s.abort()
        self.finisher.shutdown(wait=True, cancel_futures=exc_type is not None)
        self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)
        self._free.clear()


class UploadSink:
    """A writer whose bytes become one object: a single PUT if they fit in one part, else a
    multipart upload whose parts are sent while the writer goes on. A write fails as soon as
    a part of this object (or another object's completion) has failed, after botocore's
    retries; ``close()`` sends the last part and leaves the rest — waiting for the parts,
    completing the upload — to the uploader's background step (:meth:`Uploader.wait`);
    ``abort()`` (or any failure) aborts it, so no multipart upload is left to bill."""

    def __init__(self, uploader: Uploader, rel: str) -> None:
        self.up, self.store, self.rel = uploader, uploader.store, rel
        self.key = self.store.key(rel)
        self.buf = uploader.take_buffer()
        self.fill = 0
        self.upload_id: str | None = None
        self.futures: list[Future] = []
        self.failure: BaseException | None = None
        self.lock = threading.Lock()
        self.done = self.abandoned = self.closed = False

    # ------------------------------------------------------------------ the writer's side
    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        part = self.up.part_bytes
        while view:
            take = min(len(view), part - self.fill)
            self.buf[self.fill:self.fill + take] = view[:take]
            self.fill += take
            view = view[take:]
            if self.fill == part:
                self._send(self.buf)
                self.buf, self.fill = self.up.take_buffer(), 0
        return size

    def flush(self) -> None:
        pass

    def _check(self) -> None:
        if self.failure is not None:
            raise self.store.error(self.failure, f"uploading {self.rel}") from None
        if self.up.failure is not None:
            raise self.store.error(self.up.failure, "uploading") from None
        if self.abandoned:
            raise BackupError(f"the upload of {self.rel} was abandoned")

    def _send(self, body: bytearray) -> None:
        """Hand one full part to a sending thread, once a slot is free."""
        with self.lock:
            self._check()
            if self.upload_id is None:
                self.upload_id = self.store.call(f"starting the upload of {self.rel}",
                                                 "create_multipart_upload",
                                                 Key=self.key)["UploadId"]
        while not self.up.slots.acquire(timeout=0.2):
            self._check()
        try:
            self._check()
            assert self.up.pool is not None
            self.futures.append(self.up.pool.submit(self._send_part, len(self.futures) + 1,
                                                    body))
        except BaseException:
            self.up.slots.release()
            raise

    # ------------------------------------------------------------------ a sending thread
    def _send_part(self, number: int, body: bytearray) -> dict[str, Any] | None:
        try:
            if self.failure is not None or self.abandoned:
                return None
            res = self.store.client.upload_part(Bucket=self.store.bucket, Key=self.key,
                                                UploadId=self.upload_id, PartNumber=number,
                                                Body=body)
            self.up.give_back(body)  # sent: botocore holds it no longer
            return {"PartNumber": number, "ETag": res["ETag"]}
        except BaseException as exc:
            if self.failure is None:
                self.failure = exc
            raise
        finally:
            self.up.slots.release()

    # ------------------------------------------------------------------ the end
    def close(self) -> None:
        if self.done or self.closed:
            return
        self.closed = True
        try:
            if self.upload_id is None:  # smaller than one part: one request
                self._check()
                body = bytes(memoryview(self.buf)[:self.fill])
                self.up.give_back(self.buf)
                self.buf, self.fill = bytearray(), 0
                self.up.finish_later(lambda: self._put_whole(body))
            else:
                if self.fill:
                    del self.buf[self.fill:]  # the last part, shorter
                    self._send(self.buf)
                else:
                    self.up.give_back(self.buf)
                self.buf, self.fill = bytearray(), 0
                self.up.finish_later(self._complete)
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ the background step
    def _put_whole(self, body: bytes) -> None:
        if self.abandoned:
            return
        self.store.call(f"uploading {self.rel}", "put_object", Key=self.key, Body=body)
        self.done = True
        self.up.confirm(self.rel)

    def _complete(self) -> None:
        try:
            wait(self.futures)
            self._check()
            parts = [f.result() for f in self.futures]
            self.store.call(f"completing the upload of {self.rel}",
                            "complete_multipart_upload", Key=self.key,
                            UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            self.abort()
            raise
        self.done = True
        self.up.confirm(self.rel)

    def abort(self) -> None:
        """Give up: no more parts are sent, those on their way are waited for, and the
        multipart upload (if one was started) is aborted. Safe to call twice, from any
        thread."""
        if self.done:
            return
        with self.lock:
            if self.abandoned:
                return
            self.abandoned = True
        for f in self.futures:
            f.cancel()
        wait(self.futures)
        self.buf = bytearray()
        if self.upload_id is not None:
            try:
                self.store.call(f"aborting the upload of {self.rel}", "abort_multipart_upload",
                                Key=self.key, UploadId=self.upload_id)
            except BackupError:
                pass  # `backup prune` lists and aborts what is left
