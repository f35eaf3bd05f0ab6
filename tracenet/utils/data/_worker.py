"""What runs inside a DataLoader worker process, and get_worker_info()."""
import os
import queue
import random
import sys
import traceback

import numpy as np

from ... import _random

# how often a waiting worker checks that the main process is still there, and how often the
# main process checks that its workers are still alive (seconds)
MP_STATUS_CHECK_INTERVAL = 5.0

_worker_info = None


class WorkerInfo:
    """Inside a worker: ``id``, ``num_workers``, ``seed`` and ``dataset`` (this worker's copy).
    Read-only once made."""

    __initialized = False

    def __init__(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)
        self.__keys = tuple(kwargs.keys())
        self.__initialized = True

    def __setattr__(self, key, val):
        if self.__initialized:
            raise RuntimeError(f"Cannot assign attributes to {self.__class__.__name__} objects")
        return super().__setattr__(key, val)

    def __repr__(self):
        items = [f"{k}={getattr(self, k)}" for k in self.__keys]
        return f"{self.__class__.__name__}({', '.join(items)})"


def get_worker_info():
    """The WorkerInfo of the DataLoader worker process calling it; None in the main process."""
    return _worker_info


class ExceptionWrapper:
    """An exception raised in a worker, carried to the main process and raised there again
    with the same type and the worker's traceback in the message."""

    def __init__(self, exc_info=None, where="in background"):
        exc_info = exc_info or sys.exc_info()
        self.exc_type = exc_info[0]
        self.exc_msg = "".join(traceback.format_exception(*exc_info))
        self.where = where

    def reraise(self):
        msg = f"Caught {self.exc_type.__name__} {self.where}.\nOriginal {self.exc_msg}"
        if self.exc_type is KeyError:
            msg = KeyErrorMessage(msg)
        try:
            exception = self.exc_type(msg)
        except Exception:
            raise RuntimeError(msg) from None
        raise exception


class KeyErrorMessage(str):
    """KeyError repr()s its message; this keeps the traceback readable."""

    def __repr__(self):
        return self


class _IterableDatasetStopIteration:
    """Sent by a worker whose IterableDataset copy is exhausted."""

    def __init__(self, worker_id):
        self.worker_id = worker_id


class _ResumeIteration:
    """Sent to persistent workers to start a new epoch; sent back as the acknowledgement."""


def make_fetcher(kind_iterable, dataset, auto_collation, collate_fn, drop_last):
    """fetch(index): the batch (or sample) for one entry of the index sampler."""
    if kind_iterable:
        it = iter(dataset)
        ended = [False]

        def fetch(possibly_batched_index):
            if ended[0]:
                raise StopIteration
            if auto_collation:
                data = []
                for _ in possibly_batched_index:
                    try:
                        data.append(next(it))
                    except StopIteration:
                        ended[0] = True
                        break
                if len(data) == 0 or (drop_last and len(data) < len(possibly_batched_index)):
                    raise StopIteration
            else:
                data = next(it)
            return collate_fn(data)
        return fetch

    def fetch(possibly_batched_index):
        if auto_collation:
            if callable(getattr(dataset, "__getitems__", None)):
                data = dataset.__getitems__(possibly_batched_index)
            else:
                data = [dataset[idx] for idx in possibly_batched_index]
        else:
            data = dataset[possibly_batched_index]
        return collate_fn(data)
    return fetch


def seed_worker(base_seed, worker_id):
    """Seed Python's, numpy's and tracenet's generators in a worker (differently per worker)."""
    seed = base_seed + worker_id
    random.seed(seed)
    _random.manual_seed(seed)
    np.random.seed(np.random.SeedSequence([worker_id, base_seed]).generate_state(4))
    return seed


def worker_loop(kind_iterable, dataset, index_queue, data_queue, auto_collation, collate_fn,
                drop_last, base_seed, init_fn, worker_id, num_workers, done_event):
    """A worker's main: take (task index, sampler index) from index_queue, put (task index,
    batch or ExceptionWrapper) on data_queue; None ends it. ``done_event`` set means the main
    process is shutting down and reads no more results."""
    global _worker_info
    parent = os.getppid()
    try:
        seed = seed_worker(base_seed, worker_id)
        _worker_info = WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed,
                                  dataset=dataset)
        init_exception = None
        try:
            if init_fn is not None:
                init_fn(worker_id)
            fetch = make_fetcher(kind_iterable, dataset, auto_collation, collate_fn, drop_last)
        except Exception:
            init_exception = ExceptionWrapper(where=f"in DataLoader worker process {worker_id}")
        iteration_end = False
        while True:
            try:
                r = index_queue.get(timeout=MP_STATUS_CHECK_INTERVAL)
            except queue.Empty:
                if os.getppid() != parent:  # the main process is gone
                    break
                continue
            if isinstance(r, _ResumeIteration):
                data_queue.put((r, None))
                iteration_end = False
                fetch = make_fetcher(kind_iterable, dataset, auto_collation, collate_fn,
                                     drop_last)
                continue
            if r is None:
                break
            if iteration_end:
                continue
            idx, index = r
            if init_exception is not None:
                data, init_exception = init_exception, None
            else:
                try:
                    data = fetch(index)
                except Exception as e:
                    if isinstance(e, StopIteration) and kind_iterable:
                        data = _IterableDatasetStopIteration(worker_id)
                        iteration_end = True
                    else:
                        data = ExceptionWrapper(
                            where=f"in DataLoader worker process {worker_id}")
            data_queue.put((idx, data))
            del data, idx, index, r
    except KeyboardInterrupt:
        pass
    finally:
        if done_event.is_set():
            data_queue.cancel_join_thread()  # nobody reads them: don't wait to flush
        # otherwise exiting before the queue's feeder thread is done could lose a result, or
        # leave the queue's shared write lock held forever
        data_queue.close()
