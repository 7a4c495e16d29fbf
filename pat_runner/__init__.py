"""PAT model service: the Pretrained Actigraphy Transformer, its pre- and post-processing, served by BentoML."""
