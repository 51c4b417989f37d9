"""Synthetic inputs for the demo, the tests and the bench; no library module imports this package.

    content.py       one coloured shape on a plain background, its English, Chinese and styled captions
    datasets.py      generate(): the demo datasets in the real on-disk layouts (clean and dirty variants)
    stylized.py      the stylized sets (generic jsonl/csv, FlickrStyle10K, SentiCap) that generate() writes
    img2dataset.py   img2dataset-style webdataset shards (conceptual/) that generate() writes
    small_models.py  small random-weight CLIP and GPT-2 models (and GPT-2 small's shapes for the bench)
    photos.py        photo-like images (JPEG cost and draft decoding behave as on real photos)
    informal.py      informal, PersonalityCaptions-style captions for the tokenizer checks

The command lines are scripts/make_demo_data.py and scripts/make_small_models.py.
"""
