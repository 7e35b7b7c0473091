"""Dataset sources, splits, the decoded-image cache, the image-set format and class names. Imports no stage."""
