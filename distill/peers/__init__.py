"""The field's distillation methods as peers of rsdistill's set, each in its own module.

Every peer starts from a random coreset of real train images, so its set holds (refined) real images and is
never privacy-safe; every table labels its rows "(from real images)".
"""

from rsdistill.peers.common import FROM_REAL, PEERS, write_peer

__all__ = ["FROM_REAL", "PEERS", "write_peer"]
