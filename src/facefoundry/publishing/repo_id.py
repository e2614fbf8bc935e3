"""Hub dataset repository ids, checked before anything slow: ``publish --repo`` fails at once on a bad id.

Kept apart from :mod:`facefoundry.publishing.hub`, whose imports (card, run facts, identities) take seconds.
"""

from __future__ import annotations


class PublishError(RuntimeError):
    """Publishing failed; the message is one line, safe to print (it never holds the token)."""


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is ``NAMESPACE/NAME`` in the characters the Hub accepts; else :class:`PublishError`
    naming the option, the id and the Hub's rule."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"--repo must be NAMESPACE/NAME (a user or organisation, and a dataset name), "
                           f"got {repo_id!r}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        rule = str(exc).strip().splitlines()[0].rsplit(": ", 1)[0]  # the Hub's rule, without its echo of the id
        raise PublishError(f"--repo {repo_id!r} is not a valid Hub id: {rule}") from None
    return repo_id
