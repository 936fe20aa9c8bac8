"""The datasets: image-caption sets (COCO-Karpathy, any image-caption set, the offline synthetic shapes)."""
