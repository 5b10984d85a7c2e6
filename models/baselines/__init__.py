"""Baselines the LLM4Rec model is measured against: MostPop, ItemKNN, BPR-MF, LightGCN, SASRec-CE."""

from models.baselines.bprmf import BPRMF, BPRConfig
from models.baselines.itemknn import ItemKNN
from models.baselines.lightgcn import LightGCN, LightGCNConfig
from models.baselines.mostpop import MostPop
from models.baselines.sasrec import SASRec, SASRecConfig

__all__ = ["BPRMF", "BPRConfig", "ItemKNN", "LightGCN", "LightGCNConfig", "MostPop", "SASRec", "SASRecConfig"]
