"""Training: caption data and tokens, the training engine (steps, checkpoints, resume). Imports the core and eval
(validation scores captions as evaluation does); never extract."""
