"""Training: caption data and tokens (data), a run's setup (prepare: data, run folder, seeded model, datasets),
the engine (steps, validation loss, checkpoints, signals) and the Trainer (trainer: the loop, validation, saving,
resume). Imports the core and eval (validation scores captions as evaluation does); never extract."""
