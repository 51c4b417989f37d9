"""Evaluation: captioning feature files, scoring against references (BLEU, METEOR, ROUGE-L, CIDEr, SPICE, CLIPScore,
style measures, diversity), significance, the report and the plots. Imports the core; never extract or train."""
