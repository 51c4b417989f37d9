"""Images -> feature files: the readers of each dataset layout (one table: readers.READERS), the typed
extraction settings (settings.ExtractSettings), the batch image encoder, resumable and sharded runs
(pipeline), and img2dataset shards (conceptual). Imports the core (features, CLIP utilities, utils) and
nothing from train or eval."""
