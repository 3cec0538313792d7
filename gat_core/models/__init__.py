"""GAT generator, discriminator and the size registry."""
