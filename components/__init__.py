"""Components of the private registry stack: one module per concern."""
