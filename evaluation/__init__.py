"""
Evaluation: batched caption generation, the COCO caption metrics, attention maps and pictures, the markdown tables
of every report. Import the modules themselves: `captioning` needs only torch and transformers (the Hub-side tests
use it under transformers 4.57), `caption_metrics` neither.
"""
