"""How an error is told in one line: the CLI's `error:` lines and the pipeline's per-job failure lines."""

from __future__ import annotations


def error_line(exc: BaseException) -> str:
    """The most specific line of an error (Ray wraps worker errors in long tracebacks), with the error's type when
    that line does not name one."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if ":" in text else f"{type(exc).__name__}: {text}"
