"""LoRA (peft): wrap a model so only adapters train, and the merged weights the engine serves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def wrap_lora(model: Any, lora: Mapping[str, Any]) -> Any:
    try:
        import peft
    except ImportError as exc:
        raise ImportError("LoRA needs peft: pip install 'metaagentx[peft]'") from exc
    kwargs = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
    kwargs.update(lora)
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return peft.get_peft_model(model, peft.LoraConfig(**kwargs))


def merged_weights(peft_model: Any) -> dict[str, Any]:
    """The full weights with the adapters merged, under the base model's parameter names (what a
    generation engine without LoRA support loads); the model is unmerged again afterwards."""
    peft_model.merge_adapter()
    try:
        out = {}
        for k, v in peft_model.state_dict().items():
            if "lora_" in k:
                continue
            name = k.removeprefix("base_model.model.").replace(".base_layer.", ".")
            out[name] = v.detach().clone()
        return out
    finally:
        peft_model.unmerge_adapter()
