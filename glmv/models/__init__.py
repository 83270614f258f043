"""Model code: the fast GLM-4.1V decoder, the vision tower, checkpoint loading and test models."""
