"""Data contracts, one YAML file per output table (see ferclean.contracts for the format)."""
