"""Whether a forked process may use the TLS contexts it inherited (http11's fork hooks)."""

from __future__ import annotations

import multiprocessing
from typing import Any

from s3exchange import http11

_FORK = multiprocessing.get_context("fork")


def _report(out: Any) -> None:
    out.send(http11.tls_survived_fork())


def _child_and_grandchild(out: Any) -> None:
    """Report this process's answer, then a child's forked with no handshake running."""
    out.send(http11.tls_survived_fork())
    _in_child(out)


def _in_child(out: Any, target: Any = _report) -> None:
    child = _FORK.Process(target=target, args=(out,))
    child.start()
    child.join(30)
    assert child.exitcode == 0


def _answers(target: Any) -> list[bool]:
    receive, send = _FORK.Pipe(duplex=False)
    _in_child(send, target)
    answers = []
    while receive.poll(1):
        answers.append(receive.recv())
    return answers


def test_a_child_forked_with_no_handshake_running_may_use_its_contexts() -> None:
    assert http11.tls_survived_fork()
    assert _answers(_report) == [True]


def test_a_handshake_at_the_fork_marks_the_child_and_its_descendants() -> None:
    http11._Handshakes.change(1)  # as if a thread were inside OpenSSL with a context
    try:
        answers = _answers(_child_and_grandchild)
    finally:
        http11._Handshakes.change(-1)
    assert answers == [False, False]  # the grandchild's contexts came down the same fork
    assert http11.tls_survived_fork()  # the parent's own are untouched
    assert _answers(_report) == [True]
