"""The affinity key of a request: a hash of its prompt's first characters, so that requests sharing a
prefix (a system prompt, a document asked about several times) are sent where its KV blocks are cached.

Characters rather than tokens: the key is computed in front of the replicas, which alone hold the
tokenizer; the first few hundred characters cover the first KV blocks (16 tokens each) of any prompt."""

from __future__ import annotations

import hashlib
import json

from inferline.types import Request


def affinity_key(request: Request, num_chars: int) -> str | None:
    """None when the request has no prompt to key on."""
    if request.messages is not None:
        text = "".join(f"{m.get('role')}:{_content(m.get('content'))}\n" for m in request.messages)
    elif request.prompt_text is not None:
        text = request.prompt_text
    elif request.prompt_token_ids:
        text = " ".join(map(str, request.prompt_token_ids))
    else:
        return None
    return hashlib.blake2b(text[:num_chars].encode(), digest_size=8).hexdigest()


def _content(content: object) -> str:
    return content if isinstance(content, str) else json.dumps(content, sort_keys=True)


def owner_of(key: str, replica_ids: list[str]) -> str:
    """The replica that owns `key`: highest random weight (rendezvous) hashing, so a replica added or
    lost moves only the keys it gains or held, and every router agrees without talking to the others."""
    return max(
        replica_ids, key=lambda replica: hashlib.blake2b(f"{key}/{replica}".encode(), digest_size=8).digest()
    )
