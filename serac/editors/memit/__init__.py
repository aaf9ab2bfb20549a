"""MEMIT, many edits at once spread over a range of MLP layers (registry name ``"memit"``)."""

from serac.editors.memit.editor import LayerUpdate, MEMITConfig, MEMITEditor

__all__ = ["LayerUpdate", "MEMITConfig", "MEMITEditor"]
