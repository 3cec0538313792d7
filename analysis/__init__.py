"""Analysis of finished studies from MLflow (pandas, scipy, matplotlib; never torch)."""
