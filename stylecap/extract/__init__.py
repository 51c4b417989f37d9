"""Images -> feature files: the readers of each dataset layout, the batch image encoder, resumable and sharded
runs, and img2dataset shards. Imports the core (features, CLIP utilities, utils) and nothing from train or eval."""
