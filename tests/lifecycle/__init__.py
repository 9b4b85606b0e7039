"""A model of what the Pulumi engine does between two program runs (see `planner`)."""
