"""immunomon: gating."""
