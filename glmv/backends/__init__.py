"""Other engines behind glmv's EngineClient: vLLM, for users who outgrow one GPU (docs/SCALE_OUT.md)."""
