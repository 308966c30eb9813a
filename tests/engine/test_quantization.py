"""Quantized weights (engine `quantization`) keep the default model's answers close to the float model's."""

import pytest

from inferline import LLM, SamplingParams
from inferline.bench.quality import perplexity, token_agreement
from inferline.config import EngineConfig
from inferline.engine.model_loader import LoadedModel, load_model
from inferline.errors import InvalidRequestError

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "Water boils at a temperature of",
]
TEXT = (
    "The river rises in the hills north of the town and runs south through farmland for forty miles "
    "before it reaches the sea. In spring the snow melts and the water climbs over its banks, so the "
    "farmers plant late and harvest in the autumn, when the fields are dry. The town was built where "
    "the first bridge could be laid across the narrowest part of the valley, and its market has been "
    "held on the same square every Saturday for more than three hundred years."
)


def _greedy(loaded: LoadedModel) -> list[list[int]]:
    llm = LLM(loaded=loaded, kv_cache_bytes=64 << 20)
    outputs = llm.generate(PROMPTS, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def int8_model() -> LoadedModel:
    return load_model(EngineConfig(device="cpu", quantization="int8"))


def test_int8_greedy_output_stays_close_to_float(default_model: LoadedModel, int8_model: LoadedModel) -> None:
    agreement = token_agreement(_greedy(default_model), _greedy(int8_model))
    assert agreement.matching_prefix >= 0.6, agreement


def test_int8_and_int4_perplexity_stay_close_to_float(
    default_model: LoadedModel, int8_model: LoadedModel
) -> None:
    ids = default_model.tokenizer.encode(TEXT)
    float_ppl = perplexity(default_model, ids)
    assert 1 < float_ppl < 100  # the float model finds plain English plausible
    assert perplexity(int8_model, ids) < float_ppl * 1.02
    int4 = load_model(EngineConfig(device="cpu", quantization="int4"))
    assert perplexity(int4, ids) < float_ppl * 1.02
    # Fed 16 tokens at a time the matmuls take the decode kernels, with int8 activations. On 94 tokens
    # that moves perplexity by a few percent either way (bfloat16 alone is +1.1% here); on the
    # longer text of benchmarks/quant_quality.py both formats stay within 0.2% of float32.
    assert perplexity(default_model, ids, chunk=16) == pytest.approx(float_ppl, rel=1e-4)
    assert perplexity(int4, ids, chunk=16) < float_ppl * 1.05
    assert perplexity(int8_model, ids, chunk=16) < float_ppl * 1.05


def test_quantization_rejects_float32_with_the_fix() -> None:
    with pytest.raises(InvalidRequestError, match="dtype to auto or bfloat16") as caught:
        load_model(EngineConfig(device="cpu", dtype="float32", quantization="int8"))
    assert caught.value.param == "dtype"
