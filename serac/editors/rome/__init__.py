"""ROME, rank-one model editing of one MLP down-projection (registry name ``"rome"``)."""

from serac.editors.rome.editor import RankOneUpdate, ROMEConfig, ROMEEditor, solve_rank_one

__all__ = ["ROMEConfig", "ROMEEditor", "RankOneUpdate", "solve_rank_one"]
