"""SaLEM: MEND on the most salient layer (registry name ``"salem"``)."""

from serac.editors.salem.editor import SaLEMEditor, SaLEMEditorConfig, salient_layers

__all__ = ["SaLEMEditor", "SaLEMEditorConfig", "salient_layers"]
