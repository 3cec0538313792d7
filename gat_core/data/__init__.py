"""Datasets of the study (digits, procedural shapes, image folders) and a resumable batch sampler."""

from gat_core.data.dataset import DatasetError, ImageDataset, quantize_uint8
from gat_core.data.datasets import load_dataset
from gat_core.data.sampler import BatchSampler, sample_labels

__all__ = ["BatchSampler", "DatasetError", "ImageDataset", "load_dataset", "quantize_uint8", "sample_labels"]
