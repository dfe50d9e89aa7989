"""Generic PyTorch / Hugging Face weight reading and the strict state-dict -> NNX walk (used by sam and text)."""
