"""Training objectives: MNG noise levels and the RpGAN losses with R1/R2."""
