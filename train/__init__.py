"""Training: dataset -> trained checkpoint (torch). What the other stages use of it: the options
(`config.TrainConfig`), the checkpoint format (`checkpoint`), the model's post-processing and
anchors (`postprocess`, `model.anchors`), the PyTorch predictor (`predict.TorchPredictor`), the
losses' registry (`losses`), the splits a run trained on (`data.splits`) and the built-in dataset
(`data.synthetic`). Imports common/ only."""
