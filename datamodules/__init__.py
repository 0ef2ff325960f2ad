"""LightningDataModules, one per data source, sharing loading and validation code."""
