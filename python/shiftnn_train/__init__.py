"""Offline DenseShift training helpers for shiftnn (PyTorch; never needed by CI or setup)."""
