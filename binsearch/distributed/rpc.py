"""Calls to shard actors that never hang: one deadline for all, failures named per shard."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from binsearch.distributed.errors import ShardUnavailable


def call_shards(
    handles: Sequence[Any],
    method: Callable[..., Any],
    calls: dict[int, tuple],
    timeout: float,
    partial: bool = False,
) -> tuple[dict[int, Any], list[int], list[str]]:
    """Call ``method`` on the actors in ``calls`` (shard -> args) at once; wait at most ``timeout`` s.

    ``method`` is the :class:`binsearch.distributed.shard.ShardServer` method itself
    (``ShardServer.search``), not its name: each call's arguments are bound to its
    signature here, so a wrong call fails in the caller, before anything is sent.
    Returns ``(answers, failed_shards, reasons)``; raises :class:`ShardUnavailable`
    on any failure unless ``partial``.
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayError

    signature = inspect.signature(method)
    for args in calls.values():
        signature.bind(None, *args)  # TypeError on a call the shard would refuse
    deadline = time.monotonic() + timeout
    name = method.__name__
    refs = {s: getattr(handles[s], name).remote(*args) for s, args in calls.items()}
    try:  # the common case in one call: every shard answers
        values = ray.get(list(refs.values()), timeout=timeout)
        return dict(zip(refs, values, strict=True)), [], []
    except (GetTimeoutError, RayActorError):
        pass  # sorted out shard by shard below
    except RayError as exc:
        cause = getattr(exc, "cause", None)  # the shard's own error (bad input...)
        if isinstance(cause, Exception):
            raise cause from None
        raise
    left = max(0.0, deadline - time.monotonic())
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=left)
    ready_set = set(ready)
    answers: dict[int, Any] = {}
    failed: dict[int, str] = {}
    for s, ref in refs.items():
        if ref not in ready_set:
            failed[s] = f"no answer in {timeout:g}s"
            try:
                ray.cancel(ref)  # don't let calls pile up behind a restarting actor
            except Exception:  # noqa: BLE001 - best effort
                pass
            continue
        try:
            answers[s] = ray.get(ref, timeout=0)
        except RayActorError as exc:
            failed[s] = f"actor down: {type(exc).__name__}"
        except GetTimeoutError:
            failed[s] = "no answer"
        except RayError as exc:
            # An application error in the shard (bad input...): re-raise its cause.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
    shards, reasons = sorted(failed), [failed[s] for s in sorted(failed)]
    if shards and not partial:
        raise ShardUnavailable(shards, reasons, len(handles))
    return answers, shards, reasons
