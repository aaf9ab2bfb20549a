"""FT+L, constrained fine-tuning of one MLP down-projection (registry name ``"ft"``)."""

from serac.editors.finetune.editor import FineTuneEditor, FTConfig

__all__ = ["FTConfig", "FineTuneEditor"]
