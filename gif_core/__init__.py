"""GIF Explorer: Generalized Influence Functions as a library."""
