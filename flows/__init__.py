"""immunomon: flows."""
