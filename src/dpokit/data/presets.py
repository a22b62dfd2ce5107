"""Named data sets: ``--dataset ultrafeedback`` picks the hub id, the split and the row format.

A local file or directory with the same name wins over a preset. Naming a preset's hub id
directly (``--dataset HuggingFaceH4/ultrafeedback_binarized``) also picks its default split and
format, so the classic ``train`` split (which that data set does not have) is never tried.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str
    split: str
    eval_split: str | None
    format: str
    summary: str


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized", "train_prefs", "test_prefs", "conversational",
           "UltraFeedback binarized (61k pairs): chosen / rejected hold the whole conversation"),
    Preset("hh-rlhf", "Anthropic/hh-rlhf", "train", "test", "implicit",
           "Anthropic HH-RLHF (161k pairs): whole dialogues, the prompt is their shared start"),
    Preset("orca", "Intel/orca_dpo_pairs", "train", None, "orca",
           "Intel Orca DPO pairs (12.9k): system + question, chosen / rejected strings"),
)}

# Other names users know them by (the guides' `ultrafeedback`, `hh_rlhf`, `orca_dpo`).
PRESET_ALIASES: dict[str, str] = {
    "ultrafeedback_binarized": "ultrafeedback", "uf": "ultrafeedback",
    "hh_rlhf": "hh-rlhf", "hh": "hh-rlhf", "anthropic-hh": "hh-rlhf",
    "orca_dpo": "orca", "orca_dpo_pairs": "orca", "orca-dpo": "orca",
}


def find_preset(name: str) -> Preset | None:
    """The preset called ``name`` (or an alias of it), or the one whose hub id is ``name``."""
    key = name.strip().lower()
    key = PRESET_ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    for preset in PRESETS.values():
        if preset.hub_id.lower() == key:
            return preset
    return None
