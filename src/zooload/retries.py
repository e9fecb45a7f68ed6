"""Retries: how hard a download tries before it gives up, and the loop that tries.

Only a :class:`~zooload.errors.DownloadError` whose ``retryable`` is true is
tried again: connection failures, timeouts and stalls, HTTP 408, 429 and 5xx.
Everything else (a 404, a hash mismatch, a bad argument) fails at once. The
defaults and the reasoning behind them are in ``docs/CACHE.md``
("Resilience").
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from zooload.errors import ConfigError, DownloadError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, how long and how patiently a download is tried.

    A failed attempt that moved the download forward (new bytes reached the
    partial file, to be resumed) does not count against ``attempts`` or
    ``total_seconds``: the limits bound how long a download may make no
    progress, so a large file on a flaky link still arrives.

    Parameters
    ----------
    attempts
        Attempts in a row without progress before giving up (at least 1).
    backoff
        Seconds to wait before the second attempt; the wait doubles after
        each further failure.
    max_delay
        Cap on one computed wait. A server's ``Retry-After`` may ask for
        longer, and is honoured while it fits in ``total_seconds``.
    total_seconds
        Seconds without progress after which no new attempt starts.
    jitter
        Fraction of each wait drawn at random (0 to 1), so that many
        processes that failed together do not retry together.
    connect_timeout
        Seconds to wait for a connection.
    stall_timeout
        Seconds without a byte after which a transfer counts as timed out.
    sleep, clock, draw
        ``time.sleep``, ``time.monotonic`` and ``random.random`` by default;
        tests pass their own so that nothing really waits.

    Raises
    ------
    ConfigError
        For a negative delay, fewer than one attempt, or a jitter outside
        0 to 1.

    Examples
    --------
    >>> RetryPolicy().attempts
    5
    >>> waits = []
    >>> quick = RetryPolicy(attempts=3, jitter=0.0, sleep=waits.append)
    >>> quick.delay(failures=2, retry_after=None)
    2.0
    """

    attempts: int = 5
    backoff: float = 1.0
    max_delay: float = 30.0
    total_seconds: float = 300.0
    jitter: float = 0.5
    connect_timeout: float = 10.0
    stall_timeout: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    draw: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            message = f"RetryPolicy(attempts={self.attempts}) must allow 1 or more."
            raise ConfigError(message)
        if not 0.0 <= self.jitter <= 1.0:
            message = f"RetryPolicy(jitter={self.jitter}) must lie between 0 and 1."
            raise ConfigError(message)
        seconds = (self.backoff, self.max_delay, self.total_seconds)
        timeouts = (self.connect_timeout, self.stall_timeout)
        if min(seconds) < 0 or min(timeouts) <= 0:
            message = (
                "RetryPolicy delays must be 0 or more and its timeouts more "
                "than 0 seconds; fix the negative or zero value."
            )
            raise ConfigError(message)

    def delay(self, *, failures: int, retry_after: float | None) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row.

        Exponential backoff with jitter, or the server's ``Retry-After`` when
        that is longer.
        """
        computed = min(self.backoff * 2.0 ** (failures - 1), self.max_delay)
        computed *= 1.0 - self.jitter * self.draw()
        return max(computed, retry_after or 0.0)


@dataclass(frozen=True, slots=True)
class _Streak:
    """Failed attempts since the download last moved forward."""

    started: float
    position: int
    failures: int = 0


def with_retries(
    operation: Callable[[], T],
    policy: RetryPolicy,
    *,
    position: Callable[[], int],
) -> T:
    """Call ``operation`` until it succeeds or the policy says to give up.

    Parameters
    ----------
    operation
        One attempt; it raises :class:`DownloadError` on failure.
    policy
        The limits and the injected sleep and clock.
    position
        How far the download has come (bytes in its partial file); an
        attempt that raised it starts a new streak of attempts.

    Returns
    -------
    object
        What ``operation`` returned.

    Raises
    ------
    DownloadError
        The last failure, at once when it is not retryable; after the policy's
        limits with a note of how long it tried.

    Examples
    --------
    >>> with_retries(lambda: "done", RetryPolicy(), position=lambda: 0)
    'done'
    """
    streak = _Streak(policy.clock(), position())
    while True:
        try:
            return operation()
        except DownloadError as err:
            if not err.retryable:
                raise
            streak = _after_failure(streak, policy, position())
            delay = _delay_or_give_up(err, streak, policy)
            logger.debug(
                "attempt %d on %s failed (%s); retrying in %.2f s",
                streak.failures,
                err.url,
                err,
                delay,
            )
            policy.sleep(delay)


def _after_failure(streak: _Streak, policy: RetryPolicy, position: int) -> _Streak:
    if position > streak.position:
        # The attempt delivered bytes that the next one resumes from: the
        # download is alive, so the limits start over.
        return _Streak(policy.clock(), position, 1)
    return _Streak(streak.started, streak.position, streak.failures + 1)


def _delay_or_give_up(
    err: DownloadError, streak: _Streak, policy: RetryPolicy
) -> float:
    delay = policy.delay(failures=streak.failures, retry_after=err.retry_after)
    elapsed = policy.clock() - streak.started
    if streak.failures >= policy.attempts:
        plural = "s" if streak.failures > 1 else ""
        reason = f"{streak.failures} failed attempt{plural} in a row"
    elif elapsed + delay > policy.total_seconds:
        reason = f"{elapsed:.0f} s of failures, with {delay:.0f} s more to wait"
    else:
        return delay
    message = (
        f"{err} Gave up after {reason}; RetryPolicy(attempts={policy.attempts}, "
        f"total_seconds={policy.total_seconds:.0f}) sets these limits."
    )
    raise DownloadError(
        message, err.url, err.status, retryable=True, retry_after=err.retry_after
    ) from err
