"""immunomon: reports."""
