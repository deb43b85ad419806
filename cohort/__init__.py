"""immunomon: cohort."""
