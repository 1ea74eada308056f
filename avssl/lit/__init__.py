"""Lightning wiring: ``AVSSLModule`` (encoders + objectives + optimiser + metrics), ``AVDataModule`` and the
``train`` driver behind ``avssl-train``. The only package importing Lightning besides ``avssl.cli``."""

from avssl.lit.datamodule import AVDataModule, preprocessing_from_data
from avssl.lit.module import AVSSLModule, build_pretrain_model
from avssl.lit.run import TrainResult, train

__all__ = ["AVDataModule", "AVSSLModule", "TrainResult", "build_pretrain_model", "preprocessing_from_data", "train"]
