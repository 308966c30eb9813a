"""The same weights in Hugging Face transformers: the reference our engine is checked and benchmarked against.

transformers is a test and benchmark dependency only (`pip install inferline[test]`).
"""

from __future__ import annotations

from typing import Any

from inferline.models.loaded_weights import LoadedWeights

_HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def transformers_model(weights: LoadedWeights) -> Any:
    """A transformers causal LM (float32, eval mode) holding exactly `weights`; it never stops at EOS."""
    import transformers

    c = weights.config
    config_class = getattr(transformers, _HF_CLASSES[c.architecture].replace("ForCausalLM", "Config"))
    config = config_class(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta,
        rope_scaling=c.rope_scaling,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        pad_token_id=c.eos_token_ids[0] if c.eos_token_ids else 0,
    )
    model = getattr(transformers, _HF_CLASSES[c.architecture])(config)
    state_dict = dict(weights.state_dict)
    if c.tie_word_embeddings:
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
    model.load_state_dict(state_dict, strict=True)
    # Comparisons run a fixed number of tokens: neither side may stop (or be forced not to) at EOS.
    model.generation_config.eos_token_id = None
    return model.eval()
