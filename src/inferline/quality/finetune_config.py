"""What `inferline finetune` is asked to do, apart from the code that does it: the CLI reads its defaults
at start-up, and the training module pulls in torch (seconds) that no other command needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inferline.errors import InvalidRequestError

Method = Literal["lora", "full"]


@dataclass(frozen=True)
class FinetuneConfig:
    method: Method = "lora"
    steps: int = 30
    learning_rate: float = 1e-3
    """AdamW's rate; 1e-3 suits LoRA, full fine-tuning wants about 2e-5."""
    batch_size: int = 4
    max_seq_len: int = 256
    lora_rank: int = 8
    lora_alpha: float = 16.0
    seed: int = 0
    serve_quantization: Literal["none", "int8", "int4"] = "int8"
    """Written into config.json: the weights' quantization when the folder is served (quality/finetune.py's
    design note says why int8)."""

    def check(self) -> None:
        for name in ("steps", "batch_size", "max_seq_len", "lora_rank"):
            if getattr(self, name) < 1:
                raise InvalidRequestError(f"{name} must be at least 1; got {getattr(self, name)}", name)
        if not 0 < self.learning_rate < 1:
            raise InvalidRequestError(f"learning_rate must be in (0, 1); got {self.learning_rate}", "lr")
