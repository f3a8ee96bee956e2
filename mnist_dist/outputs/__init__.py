"""What a run leaves behind, each an action the controller calls
(`actions`): metrics.jsonl, TensorBoard, the export, LiteRT, the plots, the
profile and the tuning metric. `from_config` lists those a config asks for."""
