"""Stage 2: encoders, per-class k-means prototypes with a representative rule, and coreset baselines."""

from rsdistill.prototypes.coreset import METHODS, herding, kcenter, select_coreset, write_coreset
from rsdistill.prototypes.encoders import Encoder, load_encoder
from rsdistill.prototypes.features import Features, encode_split
from rsdistill.prototypes.kmeans import Clustering, cluster
from rsdistill.prototypes.representatives import RULES, choose_representatives
from rsdistill.prototypes.schema import Prototype, PrototypeSet, load_prototypes
from rsdistill.prototypes.stage import build_prototypes, run_prototypes

__all__ = [
    "METHODS",
    "RULES",
    "Clustering",
    "Encoder",
    "Features",
    "Prototype",
    "PrototypeSet",
    "build_prototypes",
    "choose_representatives",
    "cluster",
    "encode_split",
    "herding",
    "kcenter",
    "load_encoder",
    "load_prototypes",
    "run_prototypes",
    "select_coreset",
    "write_coreset",
]
