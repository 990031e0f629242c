"""Dense scene benchmarks of the multitask papers: NYUv2 and Cityscapes as MTAN preprocessed them."""
