"""Active-learning strategies of our own (MONAI Label's random and first are wired in main.py)."""
