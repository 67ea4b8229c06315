"""Training engine: the loop, schedules, EMA, checkpoints, evaluation."""
from fastseg.engine.evaluate import coco_evaluate, evaluate, mean_iou  # noqa: F401
from fastseg.engine.schedule import ModelEMA, warmup_lambda  # noqa: F401
from fastseg.engine.trainer import NonFiniteLossError, TrainConfig, Trainer  # noqa: F401
