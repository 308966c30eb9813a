"""The tokenizer built from GGUF metadata: parity with transformers, specials, pieces, chat template."""

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from inferline.errors import InvalidRequestError, ModelLoadError
from inferline.models.gguf_file import read_gguf
from inferline.models.tokenizer import Tokenizer

PARITY_TEXTS = [
    "Hello world!",
    "The year 2024 had 365 days; pi is 3.14159 and 1,000,000 is a million.",
    "  leading spaces, trailing spaces   \n\n\ttabs and\r\nwindows newlines",
    "emoji 🦙🔥👍🏽 and 日本語のテキスト, Ünïcödé façade naïve, русский текст",
    "def square(x: int) -> int:\n    return x ** 2  # comment\n\nprint([square(i) for i in range(10)])",
    "don't I'll we'RE they've SHE'S",
    "<|im_start|>user\nhi there<|im_end|>\n",
    "a1b22c333 v2.0.1 0x1F 2+2=4",
]


@pytest.fixture(scope="module")
def hf_tokenizer(default_gguf_path: Path):
    """transformers' tokenizer built from the same GGUF file (its own GGUF converter)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        default_gguf_path.parent, gguf_file=default_gguf_path.name
    )


@pytest.mark.parametrize("text", PARITY_TEXTS)
def test_encode_matches_transformers(default_tokenizer: Tokenizer, hf_tokenizer, text: str) -> None:
    assert default_tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=True)


def test_digits_are_split_one_by_one(default_tokenizer: Tokenizer) -> None:
    """SmolLM2's pre-tokenizer isolates every digit (tokenizer.ggml.pre = "smollm")."""
    pieces = [default_tokenizer.id_to_piece(i) for i in default_tokenizer.encode("in 2024")]
    assert pieces == ["in", " ", "2", "0", "2", "4"]


@pytest.mark.parametrize("text", PARITY_TEXTS)
def test_round_trip(default_tokenizer: Tokenizer, text: str) -> None:
    ids = default_tokenizer.encode(text)
    assert default_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_tokens(default_tokenizer: Tokenizer) -> None:
    tok = default_tokenizer
    assert tok.vocab_size == 49152
    assert tok.bos_token_id == 1
    assert tok.eos_token_ids == [2]
    assert tok.eos_token_id == 2
    assert tok.all_special_ids == list(range(17))  # the 17 control tokens, <|endoftext|> .. <empty_output>
    # SmolLM2 adds no BOS (tokenizer.ggml.add_bos_token = false).
    assert tok.encode("Hi") == tok.encode("Hi", add_special_tokens=False)
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == 1
    assert ids[-1] == 2
    assert tok.decode(ids) == "user\nHi"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nHi<|im_end|>"


def test_id_to_piece(default_tokenizer: Tokenizer) -> None:
    tok = default_tokenizer
    pieces = [tok.id_to_piece(i) for i in tok.encode("The capital of France is Paris.")]
    assert pieces == ["The", " capital", " of", " France", " is", " Paris", "."]
    assert tok.id_to_piece(2) == "<|im_end|>"
    newline = tok.encode("\n")
    assert [tok.id_to_piece(i) for i in newline] == ["\n"]
    # A multi-byte character split across tokens: the bytes are exact, the piece shows U+FFFD.
    llama_ids = tok.encode("🦙")
    assert b"".join(tok.id_to_bytes(i) for i in llama_ids) == "🦙".encode()
    assert "\ufffd" in tok.id_to_piece(llama_ids[0])
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        tok.id_to_piece(10**6)


def test_chat_template_system_and_user(default_tokenizer: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    expected = (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert default_tokenizer.apply_chat_template(messages) == expected
    without_prompt = default_tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    assert without_prompt == expected.removesuffix("<|im_start|>assistant\n")


def test_chat_template_default_system_prompt(default_tokenizer: Tokenizer) -> None:
    text = default_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_joins_content_parts(default_tokenizer: Tokenizer) -> None:
    parts = [{"type": "text", "text": "First part."}, {"type": "text", "text": "Second part."}]
    as_parts = default_tokenizer.apply_chat_template([{"role": "user", "content": parts}])
    as_string = default_tokenizer.apply_chat_template(
        [{"role": "user", "content": "First part.\nSecond part."}]
    )
    assert as_parts == as_string
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    with pytest.raises(InvalidRequestError, match="image_url"):
        default_tokenizer.apply_chat_template([{"role": "user", "content": image}])


def test_encode_chat_does_not_add_a_second_bos(default_tokenizer: Tokenizer) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    ids = default_tokenizer.encode_chat(messages)
    assert ids == default_tokenizer.encode(
        default_tokenizer.apply_chat_template(messages), add_special_tokens=False
    )
    assert ids[0] == 1  # <|im_start|>, matched whole


def test_template_errors_are_request_errors(default_tokenizer: Tokenizer) -> None:
    from inferline.models.chat_template import ChatTemplate

    template = ChatTemplate(
        "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}ok"
    )
    assert template.render([{"role": "user", "content": "a"}]) == "ok"
    with pytest.raises(InvalidRequestError, match="one message only"):
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ModelLoadError, match="not valid Jinja"):
        ChatTemplate("{% for %}")


def test_sandbox_blocks_unsafe_attributes() -> None:
    from inferline.models.chat_template import ChatTemplate

    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(Exception, match="unsafe|not safely"):
        template.render([{"role": "user", "content": "a"}])


def test_model_without_template_says_so(default_gguf_path: Path) -> None:
    metadata = dict(read_gguf(default_gguf_path).metadata)
    del metadata["tokenizer.chat_template"]
    tok = Tokenizer.from_gguf_metadata(metadata)
    assert not tok.has_chat_template
    with pytest.raises(InvalidRequestError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_unsupported_pre_tokenizer_is_a_clear_error(default_gguf_path: Path) -> None:
    metadata = {**read_gguf(default_gguf_path).metadata, "tokenizer.ggml.pre": "made-up"}
    with pytest.raises(ModelLoadError, match="'made-up' is not supported"):
        Tokenizer.from_gguf_metadata(metadata)


# --- SentencePiece ("llama") vocabularies ---------------------------------------------------------

SPM_PIECES = ["▁t", "he", "▁the", "in", "▁a", "an", "▁an", "er", "on", "▁o", "▁on", "ll", "▁he", "▁hel"]
SPM_PIECES += ["lo", "llo", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "▁in", "ing", "▁th", "is", "▁is"]
SPM_CHARS = list("▁abcdefghijklmnopqrstuvwxyzHTW.,!'")


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SentencePiece-BPE vocabulary as llama.cpp stores it: scores, byte tokens, BOS added."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *SPM_PIECES, *SPM_CHARS]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(SPM_PIECES) + len(SPM_CHARS))
    scores = (
        [0.0] * 259
        + [-float(i) for i in range(len(SPM_PIECES))]
        + [-1000.0 - i for i in range(len(SPM_CHARS))]
    )
    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(8)
    writer.add_head_count(2)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("text", ["hello world", "the thing is on", "Hello World!", "naïve ü 🦙", "inhe"])
def test_sentencepiece_matches_transformers(spm_gguf: Path, text: str) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(spm_gguf.parent, gguf_file=spm_gguf.name)
    ours = Tokenizer.from_gguf_metadata(read_gguf(spm_gguf).metadata)
    ids = ours.encode(text)
    assert ids == reference.encode(text)
    assert ids[0] == 1  # BOS added
    assert ours.decode(ids) == text


def test_sentencepiece_follows_llama_cpp_where_transformers_differs(spm_gguf: Path) -> None:
    """llama.cpp prefixes a space to the text and after every special token, and keeps runs of spaces."""
    tok = Tokenizer.from_gguf_metadata(read_gguf(spm_gguf).metadata)
    pieces = [tok.id_to_piece(i) for i in tok.encode("  the", add_special_tokens=False)]
    assert pieces == [" ", " ", " the"]
    pieces = [tok.id_to_piece(i) for i in tok.encode("<s>hello</s>the", add_special_tokens=False)]
    assert pieces == ["<s>", " hello", "</s>", " the"]
    assert tok.id_to_bytes(tok.encode("🦙", add_special_tokens=False)[-1]) == "🦙".encode()[-1:]
