"""The tokenizer the engine and the server use, whatever file the model came from.

Design note: one class wraps a Rust `tokenizers.Tokenizer` built either from GGUF metadata
(`gguf_tokenizer.build_backend`) or from a Hugging Face folder's tokenizer.json. BOS/EOS
insertion lives in the backend's post-processor in both cases, so `encode` has one code path.
transformers is never imported here: it takes seconds to import and the server starts with
this class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders

from inferline.errors import InvalidRequestError, ModelLoadError
from inferline.models.chat_template import ChatTemplate
from inferline.models.gguf_tokenizer import build_backend


class Tokenizer:
    """Text <-> token ids, readable token pieces, and the model's chat template."""

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_token_id: int | None,
        eos_token_ids: Sequence[int],
        chat_template: str | None,
    ) -> None:
        self.backend = backend
        """The underlying `tokenizers.Tokenizer` (e.g. to save it as tokenizer.json)."""
        self._bos_token_id = bos_token_id
        self._eos_token_ids = list(dict.fromkeys(eos_token_ids))
        self._special_ids = {i for i, token in backend.get_added_tokens_decoder().items() if token.special}
        self._token_to_bytes = _token_bytes_function(backend)
        self._bytes_cache: dict[int, bytes] = {}
        self._chat_template = (
            ChatTemplate(chat_template, self._token_text(bos_token_id), self._token_text(self.eos_token_id))
            if chat_template
            else None
        )

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from a GGUF file's `tokenizer.*` keys."""
        # EOS, end-of-turn and end-of-message all end a generation (Llama 3 ends turns with <|eot_id|>).
        eos_keys = [f"tokenizer.ggml.{name}_token_id" for name in ("eos", "eot", "eom")]
        return cls(
            build_backend(metadata),
            bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=[int(metadata[key]) for key in eos_keys if key in metadata],
            chat_template=metadata.get("tokenizer.chat_template"),
        )

    @classmethod
    def from_hf_folder(cls, path: Path) -> Tokenizer:
        """Build from tokenizer.json (+ tokenizer_config.json, generation_config.json, config.json)."""
        path = Path(path)
        backend = read_tokenizer_json(path)
        tokenizer_config = _read_json(path / "tokenizer_config.json")
        model_config = _read_json(path / "config.json")
        bos_token_id = _token_id(backend, tokenizer_config.get("bos_token"))
        # generation_config.json first: it lists every stop id (e.g. Llama 3's <|eot_id|>).
        eos_token_ids = [
            *_ids(_read_json(path / "generation_config.json").get("eos_token_id")),
            *_ids(_token_id(backend, tokenizer_config.get("eos_token"))),
            *_ids(model_config.get("eos_token_id")),
        ]
        return cls(
            backend,
            bos_token_id=bos_token_id if bos_token_id is not None else model_config.get("bos_token_id"),
            eos_token_ids=eos_token_ids,
            chat_template=_hf_chat_template(path, tokenizer_config),
        )

    # --- properties ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        """The primary end-of-sequence id (the one templates call `eos_token`)."""
        return self._eos_token_ids[0] if self._eos_token_ids else None

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends generation (EOS, end-of-turn, end-of-message)."""
        return list(self._eos_token_ids)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids that `decode(skip_special_tokens=True)` drops, plus BOS and the EOS ids."""
        ids = set(self._special_ids) | set(self._eos_token_ids)
        if self._bos_token_id is not None:
            ids.add(self._bos_token_id)
        return sorted(ids)

    @property
    def has_chat_template(self) -> bool:
        return self._chat_template is not None

    @property
    def chat_template_source(self) -> str | None:
        """The chat template's Jinja source (to save it beside fine-tuned weights); None without one."""
        return self._chat_template.source if self._chat_template is not None else None

    # --- text <-> ids -------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with add_special_tokens, BOS/EOS are added where the model wants them.

        Special-token text inside `text` (e.g. "<|im_start|>") is always matched as one token.
        """
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for (OpenAI logprobs' `bytes` field); may be partial UTF-8."""
        cached = self._bytes_cache.get(token_id)
        if cached is None:
            cached = self._bytes_cache[token_id] = self._piece_bytes(token_id)
        return cached

    def id_to_piece(self, token_id: int) -> str:
        """A readable string for one token, e.g. " Paris" (invalid UTF-8 shows as U+FFFD)."""
        return self.id_to_bytes(token_id).decode("utf-8", errors="replace")

    # --- chat ---------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """The prompt text for a conversation, rendered with the model's own template.

        The text already holds any BOS the template writes: encode it with
        add_special_tokens=False (or use `encode_chat`).
        """
        if self._chat_template is None:
            raise InvalidRequestError(
                "this model has no chat template, so it cannot take chat messages; "
                "send a plain prompt to the completions API, or use a chat (instruct) model",
                param="messages",
            )
        return self._chat_template.render(messages, add_generation_prompt=add_generation_prompt, **extra)

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of the chat-templated conversation (no second BOS), offering `tools` when given."""
        prompt = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        return self.encode(prompt, add_special_tokens=False)

    def _piece_bytes(self, token_id: int) -> bytes:
        token = self.backend.id_to_token(token_id)
        if token is None:
            raise InvalidRequestError(
                f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        if token_id in self._special_ids:
            return token.encode("utf-8")
        return self._token_to_bytes(token)

    def _token_text(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        return self.backend.id_to_token(token_id) or ""


def read_tokenizer_json(folder: Path) -> BackendTokenizer:
    """The folder's tokenizer.json; only fast (tokenizers-library) tokenizers are supported."""
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(
            f"{folder} has no tokenizer.json; only fast (tokenizers-library) tokenizers are supported. "
            "Save one with transformers: AutoTokenizer.from_pretrained(folder).save_pretrained(folder)"
        )
    return BackendTokenizer.from_file(str(tokenizer_file))


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable bytes stand for themselves; the other 68
    bytes (controls, space, 127-160, 173) map to code points 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if chr(b) not in table)
    for offset, b in enumerate(shifted):
        table[chr(256 + offset)] = b
    return table


_BYTE_LEVEL = _byte_level_table()


def _byte_level_bytes(token: str) -> bytes:
    try:
        return bytes(_BYTE_LEVEL[char] for char in token)
    except KeyError:  # an added token stored as plain text
        return token.encode("utf-8")


def _sentencepiece_bytes(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    return token.replace("▁", " ").encode("utf-8")


def _token_bytes_function(backend: BackendTokenizer) -> Callable[[str], bytes]:
    """Pick the piece -> bytes rule from the decoder a tokenizer.json declares."""
    if isinstance(backend.decoder, decoders.ByteLevel):
        return _byte_level_bytes
    if backend.decoder is not None and b"ByteFallback" in backend.decoder.__getstate__():
        return _sentencepiece_bytes
    return lambda token: backend.decoder.decode([token]).encode() if backend.decoder else token.encode()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc


def _token_id(backend: BackendTokenizer, token: str | Mapping[str, Any] | None) -> int | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(token, Mapping):
        token = token.get("content")
    return backend.token_to_id(token) if isinstance(token, str) else None


def _ids(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _hf_chat_template(path: Path, tokenizer_config: Mapping[str, Any]) -> str | None:
    """chat_template.jinja wins; tokenizer_config.json may hold a string or a list of named ones."""
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, Mapping)}
        return named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None
