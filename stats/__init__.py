"""immunomon: stats."""
