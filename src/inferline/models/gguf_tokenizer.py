"""Build a Hugging Face `tokenizers.Tokenizer` from the vocabulary stored in GGUF metadata.

Design note: llama.cpp stores a tokenizer as plain lists (tokens, merges or scores, token types)
plus the name of its pre-tokenizer (`tokenizer.ggml.pre`); the regexes behind those names live
in llama.cpp's C++ source. We rebuild the same pipeline with the `tokenizers` library so that
encoding runs in Rust and matches the model's original `tokenizer.json`:

- "gpt2" models (byte-level BPE): BPE(vocab, merges) + the pre-tokenizer that `tokenizer.ggml.pre`
  names + a ByteLevel decoder.
- "llama" models (SentencePiece BPE): merges are recovered from the vocabulary scores (a merge
  (a, b) ranks by the score of a + b, highest first), spaces become "▁", unknown characters fall
  back to <0xXX> byte tokens.

Control and unknown tokens (types 3, 2) become special added tokens and user-defined ones (type 4)
plain added tokens, so all are matched whole in the text, as llama.cpp does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from inferline.errors import ModelLoadError

TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_BYTE = 6

# The split regexes of the original tokenizer.json files (llama.cpp keeps equivalent copies).
_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre names, grouped by the pre-tokenizer they stand for.
_PRE_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell")
_PRE_GPT2 = ("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais")
_PRE_LLAMA3 = ("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "deepseek-r1-qwen-distill-llama")
_PRE_QWEN2 = ("qwen2", "deepseek-r1-qwen", "stablelm2")
SUPPORTED_PRE_TOKENIZERS = _PRE_DIGITS_THEN_GPT2 + _PRE_GPT2 + _PRE_LLAMA3 + _PRE_QWEN2


def build_backend(metadata: Mapping[str, Any]) -> BackendTokenizer:
    """The `tokenizers.Tokenizer` described by a GGUF file's `tokenizer.ggml.*` keys."""
    kind = metadata.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in metadata:
        raise ModelLoadError("the GGUF file has no tokenizer (no tokenizer.ggml.tokens key)")
    if kind == "gpt2":
        backend = _byte_level_bpe(metadata)
    elif kind == "llama":
        backend = _sentencepiece_bpe(metadata)
    else:
        raise ModelLoadError(
            f"GGUF tokenizer model {kind!r} is not supported (supported: 'gpt2' byte-level BPE, "
            "'llama' SentencePiece BPE); load the model from its Hugging Face folder instead"
        )
    _add_special_tokens(backend, metadata)
    _add_bos_eos(backend, metadata)
    return backend


def _byte_level_bpe(metadata: Mapping[str, Any]) -> BackendTokenizer:
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in metadata.get("tokenizer.ggml.merges", [])]
    pre = str(metadata.get("tokenizer.ggml.pre", "default"))
    # Llama 3's tokenizer.json sets ignore_merges: a word that is itself a token is not split.
    bpe = models.BPE(
        vocab={token: token_id for token_id, token in enumerate(tokens)},
        merges=merges,
        ignore_merges=pre in _PRE_LLAMA3,
    )
    backend = BackendTokenizer(bpe)
    backend.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    return backend


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre in _PRE_DIGITS_THEN_GPT2:
        # SmolLM / StarCoder: every digit is its own word, then GPT-2's split.
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in _PRE_GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pattern = {**dict.fromkeys(_PRE_LLAMA3, _LLAMA3_PATTERN), **dict.fromkeys(_PRE_QWEN2, _QWEN2_PATTERN)}
    if pre not in pattern:
        raise ModelLoadError(
            f"GGUF pre-tokenizer {pre!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}); "
            "load the model from its Hugging Face folder (tokenizer.json) instead"
        )
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern[pre]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _sentencepiece_bpe(metadata: Mapping[str, Any]) -> BackendTokenizer:
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    scores: list[float] = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or [TOKEN_TYPE_NORMAL] * len(tokens)
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    bpe = models.BPE(
        vocab=vocab,
        merges=_merges_from_scores(tokens, scores, types, vocab),
        unk_token=tokens[unk_id] if unk_id is not None else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = BackendTokenizer(bpe)
    add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    prepend = [normalizers.Prepend("▁")] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*prepend, normalizers.Replace(" ", "▁")])
    strip_prefix = [decoders.Strip(" ", 1, 0)] if add_space_prefix else []
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip_prefix]
    )
    return backend


def _merges_from_scores(
    tokens: list[str], scores: list[float], types: list[int], vocab: Mapping[str, int]
) -> list[tuple[str, str]]:
    """SentencePiece BPE stores no merges: a pair (a, b) merges if a + b is a normal token, and
    earlier the higher that token's score. Ties keep vocabulary order of the parts."""
    ranked: list[tuple[float, int, int, str, str]] = []
    for token_id, token in enumerate(tokens):
        if types[token_id] != TOKEN_TYPE_NORMAL or len(token) < 2:
            continue
        for split in range(1, len(token)):
            left_id = vocab.get(token[:split])
            right_id = vocab.get(token[split:])
            if left_id is not None and right_id is not None:
                ranked.append((-scores[token_id], left_id, right_id, token[:split], token[split:]))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _add_special_tokens(backend: BackendTokenizer, metadata: Mapping[str, Any]) -> None:
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or []
    keys = [f"tokenizer.ggml.{name}_token_id" for name in ("bos", "eos", "eot", "eom")]
    special_ids = {metadata[key] for key in keys if key in metadata}
    special: list[AddedToken] = []
    user_defined: list[AddedToken] = []
    for token_id, token_type in enumerate(types):
        is_special = token_type in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN)
        if is_special or (token_id in special_ids and token_type != TOKEN_TYPE_BYTE):
            special.append(AddedToken(tokens[token_id], special=True, normalized=False))
        elif token_type == TOKEN_TYPE_USER_DEFINED:
            user_defined.append(AddedToken(tokens[token_id], special=False, normalized=False))
    # Added tokens already in the vocabulary keep their ids; they are only matched whole from now on.
    backend.add_special_tokens(special)
    backend.add_tokens(user_defined)


def _add_bos_eos(backend: BackendTokenizer, metadata: Mapping[str, Any]) -> None:
    """The post-processor adds BOS (and EOS) where the model asks for it, as tokenizer.json would."""
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    eos_id = metadata.get("tokenizer.ggml.eos_token_id")
    # Without the key, llama.cpp adds BOS for SentencePiece vocabularies and not for byte-level ones.
    default_add_bos = metadata.get("tokenizer.ggml.model") == "llama"
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_add_bos)) and bos_id is not None
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and eos_id is not None
    if not (add_bos or add_eos):
        return
    prefix = [tokens[bos_id]] if add_bos else []
    suffix = [tokens[eos_id]] if add_eos else []
    special_tokens = [(tokens[bos_id], bos_id)] if add_bos else []
    if add_eos and not (add_bos and bos_id == eos_id):
        special_tokens.append((tokens[eos_id], eos_id))
    backend.post_processor = processors.TemplateProcessing(
        single=[*prefix, "$A", *suffix],
        pair=[*prefix, "$A", *suffix, *prefix, "$B:1", *suffix],
        special_tokens=special_tokens,
    )
